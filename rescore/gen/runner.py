"""Plan generation units and run them into the store.

A unit is model x task x seed (plus the task's data fingerprint and sampling parameters); its run id is
a hash of that resolved config, so completed units are found without loading anything. Deterministic
tasks (loglikelihood, rolling, greedy generation) give the same rows for every seed, so they run once,
under the first seed; sampled generation runs once per seed.
"""

from __future__ import annotations

import platform
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rescore.artifacts.ids import run_id as make_run_id
from rescore.artifacts.manifest import Manifest, checked_manifest
from rescore.artifacts.store import MANIFEST, Store, UnitWriter, environment_versions, now_iso
from rescore.artifacts.tensors import DistParts
from rescore.config import GenConfig, ModelConfig, SuiteConfig, TaskConfig
from rescore.core import GenParams, Request, RequestType
from rescore.errors import ConfigError, CorruptArtifactError, LockedError, StoreError, UserError
from rescore.gen.base import Backend, RunContext, make_backend
from rescore.install import git_revision

# ModelConfig.options that change how a run behaves but not what it produces
RUNTIME_OPTIONS = frozenset({"rows_per_s", "fail_after"})


@dataclass
class UnitPlan:
    model: ModelConfig
    suite: SuiteConfig
    task: TaskConfig
    seed: int
    request_type: RequestType
    data_fp: str
    gen: GenParams | None
    resolved: dict[str, Any]
    run_id: str
    data: Any = field(default=None, repr=False)  # rescore.tasks.data.TaskData
    data_root: Path | None = None  # where the suite's local task files were found

    @property
    def label(self) -> str:
        return f"{self.model.name} · {self.task.name} · seed {self.seed}"


def canonical_model_path(path: str) -> str:
    """A local checkpoint's absolute, symlink-free path (so ``step_100`` typed in two directories are two
    models, and three spellings of one directory are one); hub ids and ``fake`` stay as written."""
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else path


def model_identity(model: ModelConfig) -> dict[str, Any]:
    """The parts of a model config that decide what it generates (batch sizes and devices do not)."""
    return {
        "name": model.name, "path": canonical_model_path(model.path), "backend": model.backend,
        "precision": model.precision,
        "step": model.step, "stage": model.stage, "trust_remote_code": model.trust_remote_code,
        "max_length": model.max_length,
        "options": {k: v for k, v in sorted(model.options.items()) if k not in RUNTIME_OPTIONS},
        # recorded when it is not the default, so that the run ids of units loaded with hf stay those they had
        **({"loader": model.loader} if model.loader != "hf" else {}),
    }


def unset_dist(task: TaskConfig) -> set[str]:
    """``dist`` is left out of a task's recorded config when it is off, so the run ids of units without
    stored distributions are the ones they always had."""
    return {"dist"} if task.dist is None else set()


def task_identity_exclude(task: TaskConfig) -> dict[str, Any]:
    """What of a task's config its units' rows do not depend on: the seeds list, the tier (a report label), its
    own gen section (the effective sampling parameters are recorded apart), ``dist`` when off, and the size
    budget of stored distributions."""
    out: dict[str, Any] = {"seeds": True, "tier": True, "gen": True}
    out["dist"] = True if task.dist is None else {"max_bytes_per_unit": True}
    return out


def task_gen_params(suite: SuiteConfig, task: TaskConfig, request_type: RequestType) -> GenParams | None:
    if request_type != "generate":
        return None
    return (task.gen or suite.gen or GenConfig()).to_params()


def task_seeds(suite: SuiteConfig, task: TaskConfig, request_type: RequestType, gen: GenParams | None,
               override: Sequence[int] | None = None) -> tuple[int, ...]:
    """The seeds a task runs under: all of them for sampled generation, the first only otherwise."""
    seeds = tuple(override) if override is not None else tuple(task.seeds or suite.seeds)
    if request_type != "generate" or (gen is not None and gen.greedy):
        return seeds[:1]
    return seeds


def plan_units(
    store: Store,
    suite: SuiteConfig,
    models: Sequence[ModelConfig],
    *,
    data_root: Path | None = None,
    allow_direct: bool = False,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[UnitPlan]:
    from rescore import tasks as task_api
    from rescore.tasks.data import get_task_data
    from rescore.tasks.suites import suite_data_root

    data_root = suite_data_root(suite, data_root)
    chosen = list(suite.tasks)
    if tasks:
        names = {t.name for t in chosen}
        for t in tasks:
            if t not in names:
                suite.task(t)  # raises with the list of valid names
        chosen = [t for t in chosen if t.name in set(tasks)]
    plans: list[UnitPlan] = []
    for task in chosen:
        with task_data_errors(task):
            data = get_task_data(store.root, task, data_root=data_root, allow_direct=allow_direct, suite=suite.name)
        rt = task_api.request_type(task, data)
        gen = task_gen_params(suite, task, rt)
        if gen is not None and task.gen is None and (own := task_api.gen_config(task, data)) is not None:
            gen = own.to_params()  # the family's own (lm-eval's generation kwargs) over the suite's default
        for seed in task_seeds(suite, task, rt, gen, override=seeds):
            for model in models:
                resolved = {
                    "model": model_identity(model),
                    # what the rows depend on: not the seeds list, the tier (a report label) or the task's
                    # own gen section (the effective sampling parameters are under "gen")
                    "task": task.model_dump(mode="json", exclude=task_identity_exclude(task)),
                    "data_fp": data.data_fp,
                    "seed": seed,
                    "gen": gen.to_dict() if gen else None,
                }
                plans.append(UnitPlan(model, suite, task, seed, rt, data.data_fp, gen, resolved,
                                      make_run_id(resolved), data, data_root))
    return plans


@contextmanager
def task_data_errors(task: TaskConfig) -> Iterator[None]:
    """A task's data that does not have the fields its family expects is a user error naming the task and
    its source, not a traceback."""
    try:
        yield
    except UserError:
        raise
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
        src = task.source.path or task.source.hf if task.source else "built-in data"
        raise ConfigError(f"task {task.name!r}: its data ({src}) does not fit family {task.family!r}: "
                          f"{type(e).__name__}: {e}",
                          hint="check the file (one JSON object per line), the task's source.format and "
                               "params (e.g. params.schema names the fields)") from None


def unit_state(store: Store, run_id: str) -> tuple[str, int, int | None]:
    """(state, rows_done, rows_total): state is complete | partial | missing | corrupt (see
    :func:`inspect_unit`)."""
    return inspect_unit(store, run_id)[:3]  # type: ignore[return-value]


def inspect_unit(store: Store, run_id: str) -> tuple[str, int, int | None, str | None]:
    """(state, rows_done, rows_total, why corrupt). A unit is corrupt when its manifest cannot be read, or
    when it is complete but its rows.parquet is missing or fails the cheap checks of every read (size, footer
    checksum): ``gen`` neither counts it as done nor overwrites it."""
    d = store.gen_dir / run_id
    if not (d / MANIFEST).is_file():
        return "missing", 0, None, None
    from rescore.artifacts.store import Unit

    try:
        u = Unit(d)
        if u.complete:
            u.check_rows_file()
            return "complete", u.rows_done(), u.rows_total(), None
        return "partial", u.rows_done(), u.rows_total(), None
    except CorruptArtifactError as e:
        return "corrupt", 0, None, e.message


@dataclass
class UnitResult:
    plan: UnitPlan
    action: str  # generated | resumed | skipped
    rows_written: int
    rows_total: int
    seconds: float


class Progress:
    """Progress reporting interface; the CLI passes a rich implementation, tests a silent one."""

    def start_unit(self, index: int, count: int, plan: UnitPlan, total: int, done: int) -> None: ...
    def advance(self, rows: int) -> None: ...
    def tokens(self, n: int) -> None: ...
    def end_unit(self) -> None: ...
    def message(self, text: str) -> None: ...


def build_manifest(plan: UnitPlan, backend: Backend, command: str | None, rows_total: int | None = None) -> Manifest:
    task = plan.task
    described = backend.describe()
    fields: dict[str, Any] = {
        "request_type": plan.request_type,
        "model": {**model_identity(plan.model), **described},
        "suite": plan.suite.name,
        "task": {"name": task.name, "family": task.family, "tier": task.tier, "config": task.model_dump(mode="json", exclude=unset_dist(task))},
        "data_fp": plan.data_fp,
        "data_meta": getattr(plan.data, "meta", None),
        "data_root": str(plan.data_root.resolve()) if plan.data_root is not None else None,
        "seed": plan.seed,
        "gen": plan.gen.to_dict() if plan.gen else None,
        "resolved": plan.resolved,
        "runtime": {"batch_size": plan.model.batch_size, "max_batch_tokens": plan.model.max_batch_tokens,
                    "device": plan.model.device},
        "versions": environment_versions() | dict(described.get("versions", {})),
        "git_rev": git_revision(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "command": command or " ".join(sys.argv),
    }
    if rows_total is not None:
        fields["rows_total"] = rows_total
    return Manifest.build(fields)


def run_units(
    store: Store,
    plans: Sequence[UnitPlan],
    *,
    progress: Progress | None = None,
    command: str | None = None,
    backend_factory: Callable[[ModelConfig], Backend] = make_backend,
) -> list[UnitResult]:
    """Run every plan that is not complete. Backends load lazily, once per model."""
    from rescore import tasks as task_api

    progress = progress or Progress()
    results: list[UnitResult] = []
    todo: list[UnitPlan] = []
    damaged: list[str] = []  # units left as they are (never overwritten), named in the error at the end
    for p in plans:
        state, *_, why = inspect_unit(store, p.run_id)
        if state == "corrupt":
            progress.message(f"skipping {p.label}: {why}")
            damaged.append(f"{p.run_id[:12]} ({p.label}): {why}")
            results.append(UnitResult(p, "damaged", 0, 0, 0.0))
        elif state == "complete":
            results.append(UnitResult(p, "skipped", 0, 0, 0.0))
        else:
            todo.append(p)
    # each model's units together (in the order models first appear), so each model loads once
    first: dict[str, int] = {}
    for p in todo:
        first.setdefault(p.model.model_dump_json(), len(first))
    todo.sort(key=lambda p: first[p.model.model_dump_json()])
    locked: list[str] = []
    backends: dict[str, Backend] = {}
    try:
        for i, plan in enumerate(todo):
            key = plan.model.model_dump_json()
            if key not in backends:
                for old in backends.values():
                    old.close()
                backends.clear()
                progress.message(f"loading {plan.model.name} ({plan.model.backend}, {plan.model.precision})")
                backends[key] = backend_factory(plan.model)
            backend = backends[key]
            t0 = time.perf_counter()
            with task_data_errors(plan.task):
                requests = task_api.build_requests(plan.task, plan.data, backend.tokenizer)
            try:
                results.append(_run_one(store, plan, backend, requests, progress, i, len(todo), command, t0))
            except LockedError as e:  # another process writes this unit: go on with the others
                progress.message(f"skipping {plan.label}: {e.message}")
                locked.append(f"{plan.run_id[:12]} ({plan.label})")
                results.append(UnitResult(plan, "locked", 0, 0, 0.0))
            except CorruptArtifactError as e:  # a partial unit with a damaged log: go on with the others
                progress.message(f"skipping {plan.label}: {e.message}")
                damaged.append(f"{plan.run_id[:12]} ({plan.label}): {e.message}")
                results.append(UnitResult(plan, "damaged", 0, 0, 0.0))
    finally:
        for b in backends.values():
            b.close()
    order = {p.run_id: k for k, p in enumerate(plans)}
    results.sort(key=lambda r: order[r.plan.run_id])
    if damaged:
        also = f"; {len(locked)} more are being written by other processes" if locked else ""
        err: Exception = CorruptArtifactError(f"{len(damaged)} damaged unit(s) were left as they are: " + "; ".join(damaged[:3])
                                   + (f"; and {len(damaged) - 3} more" if len(damaged) > 3 else "") + also,
                                   hint="the other units are done; delete a damaged unit's directory and run the same "
                                        "command to regenerate it (`rescore verify` lists every damaged file)")
        err.results = results  # type: ignore[attr-defined]  # what was done, for the command's summary
        raise err
    if locked:
        err = LockedError(f"{len(locked)} unit(s) are being written by other processes and were skipped: "
                          + ", ".join(locked[:5]),
                          hint="the others are done; run again when those writers have finished")
        err.results = results  # type: ignore[attr-defined]
        raise err
    return results


def check_same_model(previous: dict[str, Any] | None, manifest: Manifest, plan: UnitPlan) -> None:
    """A unit resumes only with the weights and tokenizer it was started with (a checkpoint overwritten
    at the same path would otherwise mix rows of two models)."""
    if not previous:
        return
    old, new = Manifest.load(previous, f"the manifest of unit {plan.run_id}").model, manifest.model
    for key in ("fingerprint", "tokenizer_hash"):
        was, now = getattr(old, key), getattr(new, key)
        if was and now and was != now:
            raise StoreError(
                f"unit {plan.run_id} ({plan.label}) was started with a model whose {key} was {was[:16]}, "
                f"now it is {now[:16]}: the checkpoint at {new.path} changed",
                hint=f"delete {plan.run_id} from the store's gen/ to regenerate it with the new weights")


def resume_batch_plan(w: UnitWriter, plan: UnitPlan, progress: Progress) -> tuple[int, int]:
    """The batch size and token budget a resumed unit runs with: the ones it started with, so that every
    batch has the composition and shapes of an uninterrupted run and the rows are bit-identical to it."""
    old = (w.previous_manifest or {}).get("runtime") or {}
    size, tokens = old.get("batch_size"), old.get("max_batch_tokens")
    if not isinstance(size, int) or not isinstance(tokens, int) or size < 1 or tokens < 1:
        return plan.model.batch_size, plan.model.max_batch_tokens  # a unit from before batch plans were kept
    if (size, tokens) != (plan.model.batch_size, plan.model.max_batch_tokens):
        progress.message(f"{plan.label}: resuming with the batch plan it started with (batch size {size}, "
                         f"{tokens} tokens per batch), so its rows equal an uninterrupted run's")
        w.manifest["runtime"] = {**(w.manifest.get("runtime") or {}), "batch_size": size, "max_batch_tokens": tokens}
        w.write_manifest()
    return size, tokens


def check_dist(plan: UnitPlan, backend: Backend, requests: Sequence[Request], progress: Progress) -> None:
    """A task that stores distributions runs on a backend that stores them, for a request type that has them,
    selects some positions, and its side files fit ``dist.max_bytes_per_unit`` (their size is shown first;
    ``rescore plan`` shows it too, from the same functions)."""
    from rescore.gen.dist import bytes_per_position, fmt, human_bytes, request_type_problem, size_problem

    dist = plan.task.dist
    assert dist is not None
    if (bad := request_type_problem(plan.task.name, plan.request_type, dist)) is not None:
        raise bad
    if not getattr(backend, "stores_dist", False):
        raise ConfigError(f"task {plan.task.name!r} asks for stored distributions (dist), which the "
                          f"{plan.model.backend} backend does not store", hint="run it with the hf backend")
    n = backend.dist_positions(requests, dist)  # type: ignore[attr-defined]
    size = n * bytes_per_position(dist, backend.dist_vocab)  # type: ignore[attr-defined]
    if n:
        progress.message(f"{plan.label}: storing distributions ({fmt(dist)}) at {n:,} positions: about "
                         f"{human_bytes(size)}")
    if (bad := size_problem(plan.task.name, dist, n, size, len(requests))) is not None:
        raise bad


def _generate_and_write(batches: Iterator[list[dict[str, Any]]], done: frozenset[str], w: UnitWriter,
                        parts: DistParts | None, progress: Progress) -> int:
    """Write each batch of rows (and first its distributions) while the backend computes the next one.

    One writer thread persists the batches in the order they come (fsyncs included), at most one batch behind
    the backend; a batch counts as written (progress, the return value) once it is on disk. An error of the
    writer (a full disk) stops the run at the next batch; an error of the backend, Ctrl-C or SIGTERM waits for
    the batch being written to be complete, so a resumed run finds whole batches only, as before."""

    def persist(rows: list[dict[str, Any]]) -> int:
        if parts is not None:  # the distributions are on disk before the rows that they belong to
            parts.write(rows)
        return w.append(rows)

    written = 0

    def take(batch: Future[int] | None) -> None:  # a batch is written once its write has returned
        nonlocal written
        if batch is not None:
            n = batch.result()
            written += n
            progress.advance(n)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rescore-writer") as writer:
        pending: Future[int] | None = None
        try:
            for rows in batches:
                rows = [r for r in rows if r["sample_id"] not in done]
                take(pending)
                pending = writer.submit(persist, rows)
            take(pending)
        except BaseException as e:
            # the unit's files and lock stay this process's until the batch being written is on disk, also
            # through a second Ctrl-C; a failed write came first (an earlier batch): it is the error shown
            failed = _settle(pending)
            if failed is not None and failed is not e and isinstance(e, Exception):
                raise failed from None
            raise
    return written


def _settle(pending: Future[int] | None) -> BaseException | None:
    """Wait for ``pending`` to finish, whatever signals come meanwhile; its exception (None: it succeeded)."""
    while pending is not None:
        try:
            return pending.exception()
        except KeyboardInterrupt:
            continue
    return None


def _run_one(store: Store, plan: UnitPlan, backend: Backend, requests: list[Request], progress: Progress,
             index: int, count: int, command: str | None, t0: float) -> UnitResult:
    ids = [r.sample_id for r in requests]
    if len(set(ids)) != len(ids):
        raise StoreError(f"task {plan.task.name} produced duplicate sample ids", hint="this is a task definition bug")
    if plan.task.dist is not None:
        check_dist(plan, backend, requests, progress)
    manifest = build_manifest(plan, backend, command, rows_total=len(requests))
    with UnitWriter(store, plan.run_id, checked_manifest(manifest)) as w:
        if w.already_complete:
            return UnitResult(plan, "skipped", 0, len(requests), 0.0)
        check_same_model(w.previous_manifest, manifest, plan)
        resumed = bool(w.done_ids)
        done = frozenset(w.done_ids)
        batch_size, max_batch_tokens = resume_batch_plan(w, plan, progress) if resumed else (
            plan.model.batch_size, plan.model.max_batch_tokens)
        progress.start_unit(index, count, plan, len(requests), sum(1 for i in ids if i in done))
        # The backend sees every request of the unit, so its batches are the ones an uninterrupted run
        # plans; it recomputes the batches that hold a pending row and returns the pending rows only.
        ctx = RunContext(seed=plan.seed, params=plan.gen or GenParams(), topk=plan.task.topk,
                         batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                         on_tokens=progress.tokens, done=done, dist=plan.task.dist)
        parts = DistParts(w.dir, plan.run_id) if plan.task.dist is not None else None
        gen_t0 = time.perf_counter()
        written = _generate_and_write(backend.run(requests, ctx), done, w, parts, progress)
        gen_s = time.perf_counter() - gen_t0
        prev = w.manifest.get("timings") or {}
        timings = {"generate_s": round(prev.get("generate_s", 0) + gen_s, 3),
                   "last_run_s": round(time.perf_counter() - t0, 3)}
        dist = {"dist": parts.compact(sorted(ids), plan.task.dist)} if parts is not None else {}
        w.finish(ids, {"timings": timings, "finished_by": command, **dist})
        if parts is not None:
            parts.remove()
        progress.end_unit()
    return UnitResult(plan, "resumed" if resumed else "generated", written, len(requests),
                      time.perf_counter() - t0)


__all__ = ["UnitPlan", "plan_units", "run_units", "unit_state", "model_identity", "Progress", "now_iso"]
