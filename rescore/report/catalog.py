"""The checkpoints of a store and how ``rescore compare`` and the HTML report name and select them.

A *checkpoint* is a (model name, path, step, stage, precision) found in the unit manifests; its label is
``name@step``. The baseline is named by label (``bridge@1000``), model name, checkpoint path, step, or
run-id prefix (the checkpoint of that unit); an ambiguous name is an error listing the candidates.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rescore.artifacts.manifest import Manifest
from rescore.artifacts.store import Store, Unit
from rescore.errors import ConfigError, UserError, close_names
from rescore.labels import CheckpointIdent, checkpoint_labels, names_step


# -- checkpoints and the catalog of units -----------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    name: str
    path: str
    step: int | None
    stage: str | None
    precision: str

    @classmethod
    def of(cls, manifest: dict[str, Any] | Manifest, where: str = "manifest") -> Checkpoint:
        m = (manifest if isinstance(manifest, Manifest) else Manifest.load(manifest, where)).model
        return cls(name=str(m.name), path=str(m.path), step=m.step, stage=m.stage, precision=str(m.precision))

    @property
    def sort_key(self) -> tuple[Any, ...]:
        return (series_name(self), self.step if self.step is not None else -1, self.name, self.path, self.precision)


@dataclass
class Catalog:
    """Complete units by checkpoint, task and seed (the newest unit when a cell has several)."""

    store: Store
    units: dict[Checkpoint, dict[str, dict[str, Unit]]] = field(default_factory=dict)
    labels: dict[Checkpoint, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def checkpoints(self) -> list[Checkpoint]:
        return sorted(self.units, key=lambda c: c.sort_key)

    def all_units(self, ckpts: Iterable[Checkpoint] | None = None) -> list[Unit]:
        return [u for c in (ckpts if ckpts is not None else self.units) for t in self.units[c].values() for u in t.values()]


def suite_tasks(store: Store, suite: str) -> set[str] | None:
    """Task names of a suite (shipped name or YAML path); falls back to the manifests' suite field."""
    try:
        from rescore.tasks.suites import load_suite

        return {t.name for t in load_suite(suite).tasks}
    except ConfigError:
        names = {(u.manifest.get("task") or {}).get("name") for u in store.units() if u.manifest.get("suite") == suite}
        if names:
            return {n for n in names if n}
        raise


def build_catalog(store: Store, *, suites: Sequence[str] | None = None, tasks: Sequence[str] | None = None) -> Catalog:
    if not store.gen_dir.is_dir():
        raise UserError(f"no generation units in {store.root}", hint="run `rescore gen` first, or pass --store")
    allowed: set[str] | None = None
    for s in suites or []:
        allowed = (allowed or set()) | (suite_tasks(store, s) or set())
    cat = Catalog(store)
    seen: set[str] = set()  # the tasks --task may name
    for u in store.units():
        if not u.complete:
            continue
        task = str((u.manifest.get("task") or {}).get("name"))
        if allowed is not None and task not in allowed:
            continue
        seen.add(task)
        if tasks and not any(fnmatch.fnmatchcase(task, p) for p in tasks):
            continue
        ck = Checkpoint.of(u.manifest, str(u.path / "manifest.json"))
        seed = str(u.manifest.get("seed"))
        cell = cat.units.setdefault(ck, {}).setdefault(task, {})
        old = cell.get(seed)
        if old is not None:
            keep, drop = sorted([old, u], key=lambda x: str(x.manifest.get("completed_at")), reverse=True)
            cat.notes.append(f"{task} seed {seed} of {ck.name}@{ck.step} has several units; using the newest "
                             f"{keep.run_id[:12]}, not {drop.run_id[:12]}")
            u = keep
        cell[seed] = u
    if tasks:  # a --task that matches nothing is named, not reported as an empty store
        from rescore.report.results import check_patterns

        what = f"complete unit of suite(s) {', '.join(suites)}" if suites else "complete unit"
        check_patterns("task", tasks, seen, what=what, listing="tasks of the complete units")
    if not cat.units:
        what = f" for suite(s) {', '.join(suites)}" if suites else ""
        raise UserError(f"no complete units in {store.root}{what}", hint="`rescore status` shows what has been generated")
    cat.labels = unique_labels(cat.units)
    return cat


def unique_labels(ckpts: Iterable[Checkpoint]) -> dict[Checkpoint, str]:
    """Each checkpoint's label (:func:`rescore.labels.checkpoint_labels`)."""
    cks = list(ckpts)
    idents = [CheckpointIdent(c.name, c.step, c.precision, c.path) for c in cks]
    return dict(zip(cks, checkpoint_labels(idents), strict=True))


def series_name(c: Checkpoint) -> str:
    """The name of the run a checkpoint belongs to: its model name without a trailing step."""
    if c.step is None or not names_step(c.name, c.step):
        return c.name
    return re.sub(rf"[-_.@]*(?:step)?[-_]?0*{c.step}$", "", c.name) or c.name


def select_models(cat: Catalog, patterns: Sequence[str] | None) -> list[Checkpoint]:
    """Checkpoints whose name, label or path matches one of the globs (all when none given)."""
    if not patterns:
        return cat.checkpoints
    out = [c for c in cat.checkpoints
           if any(fnmatch.fnmatchcase(s, p) for p in patterns for s in (c.name, cat.labels[c], c.path))]
    if not out:
        raise ConfigError(f"no checkpoint matches --models {' '.join(patterns)}",
                          hint="checkpoints here: " + ", ".join(cat.labels[c] for c in cat.checkpoints))
    return out


_HEX = re.compile(r"^[0-9a-f]{4,}$")


def resolve_baseline(cat: Catalog, spec: str) -> Checkpoint:
    """The checkpoint named by ``spec``: a label, a model name, a checkpoint path, a step or a run-id prefix.

    The first kind that matches anything decides; several matches of that kind are an error."""
    cks = cat.checkpoints
    kinds: list[tuple[str, list[Checkpoint]]] = [
        ("label", [c for c in cks if cat.labels[c] == spec]),
        ("model name", [c for c in cks if c.name == spec]),
        ("checkpoint path", [c for c in cks if c.path == spec]),
        ("step", [c for c in cks if spec.isdigit() and c.step == int(spec)]),
        ("run id", [c for c in cks if _HEX.match(spec)
                    and any(u.run_id.startswith(spec) for t in cat.units[c].values() for u in t.values())]),
    ]
    for kind, found in kinds:
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ConfigError(f"baseline {spec!r} is ambiguous: {len(found)} checkpoints have that {kind} "
                              f"({', '.join(cat.labels[c] for c in found)})",
                              hint="name one by its label (NAME@STEP) or a run id prefix from `rescore ls`")
    labels = [cat.labels[c] for c in cks]
    close = close_names(spec, labels + sorted({c.name for c in cks}))
    hint = (f"did you mean {', '.join(close)}? " if close else "") + "checkpoints here: " + ", ".join(labels)
    raise ConfigError(f"no checkpoint matches baseline {spec!r}", hint=hint)
