"""lm-evaluation-harness task objects for the ``lm_eval`` family: its TaskManager, the task (or group) a
suite names with its overrides, and the errors a user can fix (lm-eval missing, an unknown task, a dataset
neither local nor prepared while offline, ``trust_remote_code``), each one line.

``lm_eval`` is imported here only, and only when an ``lm_eval`` task is used.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from rescore.config import TaskConfig
from rescore.core import content_hash
from rescore.errors import ConfigError, MissingDataError, close_names
from rescore.params import Params


class DatasetUnavailable(MissingDataError):
    """An lm-eval task's dataset is neither local nor prepared and cannot be downloaded: a usage error."""

    exit_code = 2


INSTALL_HINT = "install it with `pip install 'rescore[lm-eval]'` (lm-eval==0.4.13)"


class LmEvalParams(Params):
    """``params`` of an ``lm_eval`` task."""

    task: str | None = None  # the lm-eval task, group or tag; default: the suite task's name
    include_path: str | None = None  # a directory of task YAMLs (lm-eval's --include_path)
    num_fewshot: int | None = None  # None: the task's own default (lm-eval's rule); the task's num_fewshot if > 0
    limit: int | None = None  # the first N documents of each task (lm-eval's --limit)
    fewshot_as_multiturn: bool = False
    system_instruction: str | None = None
    dataset: dict[str, Any] = {}  # overrides of the task config (dataset_path, dataset_kwargs, test_split, ...)
    trust_remote_code: bool = False


def lm_eval_version() -> str:
    """The installed lm-eval's version; a one-line error when it is not installed."""
    try:
        from importlib.metadata import version

        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError("the lm_eval task family needs lm-evaluation-harness, which is not installed",
                          hint=INSTALL_HINT) from None
    return version("lm_eval")


def lm_task_name(task: TaskConfig, p: LmEvalParams) -> str:
    return p.task or task.name


def fewshot(task: TaskConfig, p: LmEvalParams) -> int | None:
    if p.num_fewshot is not None:
        return p.num_fewshot
    return task.num_fewshot or None


@lru_cache(maxsize=4)
def task_manager(include_path: str | None) -> Any:
    lm_eval_version()
    _quiet()
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"lm-eval include_path {include_path} is not a directory", hint="give a directory of task YAMLs")
    return TaskManager(include_path=include_path)


def _quiet() -> None:
    for name in ("lm_eval", "lm-eval", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def check_name(name: str, include_path: str | None) -> None:
    tm = task_manager(include_path)
    if name in tm.all_tasks:
        return
    close = close_names(name, tm.all_tasks, n=5, cutoff=0.6)
    raise ConfigError(f"lm-eval has no task, group or tag {name!r}",
                      hint=f"did you mean {', '.join(close)}?" if close else "list them with `rescore tasks --lm-eval PATTERN`")


def spec(task: TaskConfig, p: LmEvalParams) -> str | dict[str, Any]:
    name = lm_task_name(task, p)
    if not p.dataset:
        return name
    return {"task": name, **p.dataset}


@contextlib.contextmanager
def _offline_errors(task: TaskConfig, name: str) -> Iterator[None]:
    """lm-eval's and datasets' failures to load a dataset, as one line."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    except (ConfigError, MissingDataError):
        raise
    except Exception as e:  # noqa: BLE001 - datasets/huggingface_hub raise many kinds
        text = f"{type(e).__name__}: {e}"
        if isinstance(e, ModuleNotFoundError) and e.name:
            raise ConfigError(f"lm-eval task {name!r} (task {task.name!r}) needs the Python package {e.name!r}, "
                              "which is not installed", hint=f"install it (`pip install {e.name}`, or the lm-eval extra "
                              "of the task, e.g. `pip install 'lm_eval[ifeval]==0.4.13'` for IFEval)") from None
        if "trust_remote_code" in text or "custom code" in text:
            raise ConfigError(f"lm-eval task {name!r} (task {task.name!r}) needs a dataset script "
                              "(trust_remote_code)", hint="set params.trust_remote_code: true if you trust the "
                              "dataset's code, or point the task at local files with params.dataset") from None
        low = text.lower()
        if any(s in low for s in ("offline", "connectionerror", "couldn't reach", "localentrynotfound",
                                  "couldn't find", "doesn't exist on the hub", "not found in cache")):
            raise DatasetUnavailable(
                f"the dataset of lm-eval task {name!r} (task {task.name!r}) is neither local nor prepared, and "
                f"cannot be downloaded here ({text.splitlines()[0][:200]})",
                hint=f"run `rescore prepare SUITE --task {task.name}` (or `rescore prepare --tasks {name}`) where "
                     "the network is reachable, or point the task at local files with params.dataset") from None
        raise ConfigError(f"lm-eval cannot load task {name!r} (task {task.name!r}): {text.splitlines()[0][:300]}",
                          hint="check the task's params (dataset overrides, include_path)") from None


def load(task: TaskConfig, p: LmEvalParams, docs: Mapping[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """lm-eval's ``{"tasks": {name: Task}, "groups": {name: Group}}`` for the task, with its few-shot count
    and seed set as ``simple_evaluate`` sets them. With ``docs`` (task name -> its stored documents) no
    dataset is loaded: each task's documents are those (for scoring)."""
    name = lm_task_name(task, p)
    check_name(name, p.include_path)
    tm = task_manager(p.include_path)
    if docs is None:
        _check_remote_code(tm, task, p, name)
    with _offline_errors(task, name), _stored_docs(docs), _remote_code(p.trust_remote_code):
        sp = spec(task, p)
        if isinstance(sp, dict):  # the registered config with these keys replaced (lm-eval's own merge)
            sp = tm._factory.build(tm._entry(name), overrides=sp, registry=tm._index)
        loaded = tm.load([sp])
    n = fewshot(task, p)
    for t in loaded["tasks"].values():
        if n is not None:
            if t.get_config("num_fewshot") != 0:
                t.set_config(key="num_fewshot", value=n)
        elif t.get_config("num_fewshot") is None:
            t.set_config(key="num_fewshot", value=0)
        t.set_fewshot_seed(seed=task.fewshot_seed)
    return loaded


def _check_remote_code(tm: Any, task: TaskConfig, p: LmEvalParams, name: str) -> None:
    """A task whose config asks for ``trust_remote_code`` runs only when the suite allows it."""
    entry = tm._entry(name)
    if entry is None or entry.yaml_path is None or p.trust_remote_code:
        return
    try:
        cfg = tm._factory._load_full_config(entry, p.dataset or None)
    except Exception:  # noqa: BLE001 - a config lm-eval cannot read fails (with its message) when built
        return
    if ((cfg.get("dataset_kwargs") or {}).get("trust_remote_code")):
        raise ConfigError(f"lm-eval task {name!r} (task {task.name!r}) needs trust_remote_code: its dataset runs "
                          "code of its own", hint="set params.trust_remote_code: true if you trust that code "
                          "(datasets >= 4 runs no dataset scripts at all), or point the task at local files with "
                          "params.dataset")


@contextlib.contextmanager
def _remote_code(allowed: bool) -> Iterator[None]:
    if not allowed:
        yield
        return
    import datasets

    old = getattr(datasets.config, "HF_DATASETS_TRUST_REMOTE_CODE", None)
    datasets.config.HF_DATASETS_TRUST_REMOTE_CODE = True
    try:
        yield
    finally:
        datasets.config.HF_DATASETS_TRUST_REMOTE_CODE = old


@contextlib.contextmanager
def _stored_docs(docs: Mapping[str, list[dict[str, Any]]] | None) -> Iterator[None]:
    """While lm-eval builds its task objects, each task's dataset is its stored (already processed)
    documents under every split it names, and its few-shot pool is empty: nothing is downloaded."""
    if docs is None:
        yield
        return
    import datasets
    from lm_eval.api.task import ConfigurableTask

    real_download, real_fewshot = ConfigurableTask.download, ConfigurableTask.fewshot_docs

    def download(self: Any, dataset_kwargs: Any = None, **kw: Any) -> None:
        rows = docs.get(self.config.task)
        if rows is None:  # a task of the group that has no stored rows (never asked for)
            rows = next(iter(docs.values()))
        ds = datasets.Dataset.from_list([dict(r) for r in rows])
        splits = {self.config.test_split, self.config.validation_split, self.config.training_split,
                  self.config.fewshot_split} - {None}
        self.dataset = {s: ds for s in splits}
        self.config.process_docs = None  # the stored documents are processed already

    ConfigurableTask.download = download  # type: ignore[method-assign]
    ConfigurableTask.fewshot_docs = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        ConfigurableTask.download = real_download  # type: ignore[method-assign]
        ConfigurableTask.fewshot_docs = real_fewshot  # type: ignore[method-assign]


def config_hash(task_obj: Any) -> str:
    """A hash of a task's lm-eval config (functions by their qualified names)."""
    cfg = task_obj.dump_config() if hasattr(task_obj, "dump_config") else dict(task_obj.config)
    cfg = {k: v for k, v in cfg.items() if k not in ("process_docs", "metadata")}
    return content_hash(json.loads(json.dumps(cfg, default=_fn_name, sort_keys=True)), 16)


def _fn_name(o: Any) -> str:
    if callable(o):
        return f"{getattr(o, '__module__', '')}.{getattr(o, '__qualname__', type(o).__name__)}"
    return str(o)


def matching(pattern: str | None, include_path: str | None = None) -> list[tuple[str, str]]:
    """(name, kind) of every lm-eval task, group and tag whose name contains ``pattern`` (or matches it as a
    glob)."""
    import fnmatch

    tm = task_manager(include_path)
    kinds = {**{n: "tag" for n in tm.all_tags}, **{n: "group" for n in tm.all_groups},
             **{n: "task" for n in tm.all_subtasks}}
    names = sorted(kinds)
    if pattern:
        glob = any(c in pattern for c in "*?[")
        names = [n for n in names if (fnmatch.fnmatch(n, pattern) if glob else pattern in n)]
    return [(n, kinds[n]) for n in names]
