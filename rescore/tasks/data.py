"""Prepared task data: ``<store>/data/<task>/<data_fp>/`` with ``rows.parquet`` and ``meta.json``.

``rescore prepare`` loads each task's rows from its source (the network for Hugging Face datasets), draws
the subset, and freezes rows and few-shot pool into the store. ``gen`` then reads only the prepared copy;
with nothing prepared for a Hugging Face source it stops with :class:`MissingDataError` naming the
``rescore prepare`` command, unless told to load directly. Local files and built-in prompt sets can
always be loaded directly.

The fingerprint ``data_fp`` is a hash of what decides the rows: the family, the source (id, config,
split, revision, local path, format), the subset size and seed, the family's params and, for local files
and built-in sets, the sha256 of their content. Packed perplexity windows also depend on the tokenizer;
they are cached beside the rows keyed by a tokenizer fingerprint (``rescore.tasks.ppl``).

``rows.parquet`` columns: ``part`` ("eval" or "fewshot"), ``idx`` (the row's index in its source split)
and ``row`` (the row as canonical JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rescore.config import TaskConfig
from rescore.core import canonical_json, content_hash
from rescore.errors import CorruptArtifactError, MissingDataError
from rescore.tasks.base import families
from rescore.tasks.common import IDX, subset_indices
from rescore.tasks.sources import hf_revision, resolve_path

FP_VERSION = 1
ROWS, META = "rows.parquet", "meta.json"
SUBSET_RULE = "keep the subset_size rows with the lowest sha256(f'{subset_seed}\\x1f{index}'), in source order"


@dataclass
class TaskData:
    data_fp: str
    rows: list[dict[str, Any]]
    fewshot_rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the prepared directory; None when loaded directly from the source


def data_key(task: TaskConfig) -> dict[str, Any]:
    """What decides a task's rows, apart from the content of local files."""
    return {
        "v": FP_VERSION,
        "family": task.family,
        "source": task.source.model_dump(mode="json") if task.source else None,
        "subset_size": task.subset_size,
        "subset_seed": task.subset_seed if task.subset_size is not None else None,
        "params": task.params,
        # the few-shot pool is loaded only for few-shot tasks (its size does not matter, the pool is whole)
        "fewshot_pool": task.num_fewshot > 0,
    }


def _sha256_path(path: Path) -> str:
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(os.fsencode(f.relative_to(path).as_posix()) + b"\0")  # the name's bytes, UTF-8 or not
            h.update(_sha256_path(f).encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_content(task: TaskConfig, data_root: Path | None) -> dict[str, str] | None:
    """sha256 of the local files (or built-in set) the rows come from; ``{}`` for Hugging Face sources
    (their revision is in the key); None when a local file is missing."""
    fam = families.get(task.family)
    if hasattr(fam, "source_digest"):
        try:
            return {"builtin": fam.source_digest(task, data_root)}
        except MissingDataError:
            return None
    src = task.source
    if src is None or src.path is None:
        return {}
    out = {}
    for key, rel in (("path", src.path), ("fewshot_path", src.fewshot_path)):
        if rel is None:
            continue
        p = resolve_path(rel, data_root)
        if not p.exists():
            return None
        out[key] = _sha256_path(p)
    return out


def fingerprint(task: TaskConfig, content: dict[str, str]) -> str:
    return content_hash({"key": data_key(task), "content": content})


def is_local(task: TaskConfig) -> bool:
    return task.source is None or task.source.path is not None


def task_dir(store_root: Path, task: TaskConfig) -> Path:
    from rescore.names import child

    return child(Path(store_root) / "data", task.name, kind="task name")


def _unlinked(store_root: Path, data: TaskData) -> TaskData:
    """Prepared data reached through a symbolic link is read, but nothing is written there (the token
    windows cache of perplexity tasks): the store writes no file through a link."""
    from rescore.artifacts.io import refuse_symlinks
    from rescore.errors import StoreError

    if data.path is None:
        return data
    try:
        refuse_symlinks(store_root, data.path / META)
    except StoreError:
        return TaskData(data.data_fp, data.rows, data.fewshot_rows, data.meta, None)
    return data


def prepare_command(task: TaskConfig, store_root: Path, suite: str | None) -> str:
    return f"rescore prepare {suite or '<suite>'} --task {task.name} --store {store_root}"


def get_task_data(store_root: Path, task: TaskConfig, *, data_root: Path | None = None, allow_direct: bool = False,
                  suite: str | None = None) -> TaskData:
    """The task's prepared rows, else (local/built-in sources, or ``allow_direct``) rows loaded directly."""
    content = source_content(task, data_root)
    if content is None:  # a local file is missing here: a copy prepared elsewhere may still be in the store
        found = _find_prepared_by_key(store_root, task)
        if found is not None:
            return _unlinked(store_root, read_prepared(found))
        families.get(task.family).load_rows(task, data_root)  # raises MissingDataError naming the file
        raise MissingDataError(f"data of task {task.name!r} not found")
    fp = fingerprint(task, content)
    d = task_dir(store_root, task) / fp
    if (d / META).is_file() and (d / ROWS).is_file():
        return _unlinked(store_root, read_prepared(d))
    if is_local(task) or allow_direct:
        return load_direct(task, data_root, fp, content)
    raise MissingDataError(
        f"task {task.name!r} has no prepared data in {d} (its source is the Hugging Face dataset {task.source.hf if task.source else None!r})",
        hint=f"run `{prepare_command(task, store_root, suite)}` where the network is reachable, or pass --direct",
    )


def load_direct(task: TaskConfig, data_root: Path | None, fp: str | None = None,
                content: dict[str, str] | None = None) -> TaskData:
    if content is None:
        content = source_content(task, data_root) or {}
    fp = fp or fingerprint(task, content)
    fam = families.get(task.family)
    rows, fewshot = fam.load_rows(task, data_root)
    n_source = len(rows)
    if not n_source:
        src = task.source
        where = resolve_path(src.path, data_root) if src is not None and src.path else (
            f"{src.hf} split {src.split}" if src is not None else "its built-in data")
        raise MissingDataError(f"task {task.name!r}: {where} holds no rows",
                               hint="is the file empty, or source.path or split wrong?")
    keep = subset_indices(n_source, task.subset_size, task.subset_seed)
    rows = [rows[i] for i in keep]
    meta = _meta(task, fp, content, n_source, rows, fewshot)
    return TaskData(fp, rows, fewshot, meta, None)


def _meta(task: TaskConfig, fp: str, content: dict[str, str], n_source: int, rows: list[dict[str, Any]],
          fewshot: list[dict[str, Any]]) -> dict[str, Any]:
    src = task.source
    return {
        "task": task.name,
        "family": task.family,
        "data_fp": fp,
        "key": data_key(task),
        "key_hash": content_hash(data_key(task)),
        "content": content,
        "source": src.model_dump(mode="json") if src else {"builtin": True},
        "split": src.split if src else None,
        "subset_size": task.subset_size,
        "subset_seed": task.subset_seed if task.subset_size is not None else None,
        "subset_rule": SUBSET_RULE if task.subset_size is not None else None,
        "counts": {"source_rows": n_source, "rows": len(rows), "fewshot_rows": len(fewshot)},
    }


def prepare_task(store_root: Path, task: TaskConfig, *, data_root: Path | None = None, force: bool = False) -> TaskData:
    """Load, subset and freeze one task's rows into the store (atomic writes); reuse an existing copy."""
    content = source_content(task, data_root)
    if content is None:
        families.get(task.family).load_rows(task, data_root)  # raises MissingDataError naming the file
    fp = fingerprint(task, content or {})
    d = task_dir(store_root, task) / fp
    if not force and (d / META).is_file() and (d / ROWS).is_file():
        return _unlinked(store_root, read_prepared(d))
    data = load_direct(task, data_root, fp, content or {})
    import pyarrow as pa

    from rescore.artifacts.io import atomic_write_json, atomic_write_table

    parts = [("eval", r) for r in data.rows] + [("fewshot", r) for r in data.fewshot_rows]
    table = pa.table({
        "part": pa.array([p for p, _ in parts], pa.string()),
        "idx": pa.array([int(r[IDX]) for _, r in parts], pa.int64()),
        "row": pa.array([canonical_json({k: v for k, v in r.items() if k != IDX}) for _, r in parts], pa.string()),
    })
    sha = atomic_write_table(d / ROWS, table, root=store_root)
    meta = {**data.meta, "rows_sha256": sha, "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "revision": hf_revision(task.source) if task.source is not None and task.source.hf else None}
    atomic_write_json(d / META, meta, root=store_root)
    return TaskData(fp, data.rows, data.fewshot_rows, meta, d)


def read_prepared(d: Path) -> TaskData:
    import pyarrow.parquet as pq

    from rescore.artifacts.io import read_json, sha256_file

    meta = read_json(d / META)
    if meta.get("rows_sha256") and sha256_file(d / ROWS) != meta["rows_sha256"]:
        raise CorruptArtifactError(f"{d / ROWS} does not match the sha256 in its meta.json",
                                   hint="delete the directory and run `rescore prepare` again")
    try:
        t = pq.read_table(d / ROWS).to_pydict()
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
        raise CorruptArtifactError(f"{d / ROWS} cannot be read ({e})", hint="delete it and run `rescore prepare` again") from None
    rows: list[dict[str, Any]] = []
    fewshot: list[dict[str, Any]] = []
    for part, idx, row in zip(t["part"], t["idx"], t["row"], strict=True):
        r = {**json.loads(row), IDX: idx}
        (rows if part == "eval" else fewshot).append(r)
    return TaskData(meta["data_fp"], rows, fewshot, meta, d)


def _find_prepared_by_key(store_root: Path, task: TaskConfig) -> Path | None:
    """The newest prepared copy with this task's key (used when its local files are not on this machine)."""
    root = task_dir(store_root, task)
    if not root.is_dir():
        return None
    key_hash = content_hash(data_key(task))
    best: tuple[str, Path] | None = None
    for meta_path in root.glob(f"*/{META}"):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if meta.get("key_hash") == key_hash and (meta_path.parent / ROWS).is_file():
            stamp = str(meta.get("prepared_at", ""))
            if best is None or stamp > best[0]:
                best = (stamp, meta_path.parent)
    return best[1] if best else None
