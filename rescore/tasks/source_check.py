"""``rescore prepare SUITE --check``: resolve every Hugging Face source of a suite without downloading its data.

For each distinct (dataset, config, revision) the Hub is asked whether the dataset exists and is gated, which
configs and splits it has, and which columns its rows hold; each task's split (and few-shot split) and the
fields its params name (``text_field``, ``question_field``, ...) are checked against them. Only metadata is
fetched (the dataset card, its config and split names, the builder's feature list), never the rows.

The network calls sit behind :class:`HubResolver`, so the checks themselves are plain functions of what the
Hub answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rescore.config import SuiteConfig, TaskConfig
from rescore.errors import ConfigError


class HubResolver(Protocol):
    def dataset(self, repo: str, revision: str | None) -> tuple[str | None, bool]:
        """(the commit the revision resolves to, whether the dataset is gated). Raises LookupError with a short
        reason when the dataset or the revision does not exist or cannot be read."""
        ...

    def configs(self, repo: str, revision: str | None) -> list[str]: ...

    def splits(self, repo: str, config: str | None, revision: str | None, data_dir: str | None = None) -> list[str]: ...

    def columns(self, repo: str, config: str | None, revision: str | None) -> list[str] | None:
        """The row columns, or None when the Hub's metadata does not say."""
        ...


@dataclass
class SourceReport:
    """What the Hub says about one task's source."""

    task: str
    dataset: str
    config: str | None
    split: str
    revision: str | None
    resolved: str | None = None
    gated: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _fields(task: TaskConfig) -> list[str]:
    """Row columns the task's params name (``text_field``, ``question_field``, ...)."""
    return [str(v) for k, v in sorted(task.params.items()) if k.endswith("_field") and isinstance(v, str)]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def check_task(task: TaskConfig, hub: HubResolver, cache: dict[Any, Any] | None = None) -> SourceReport | None:
    """The report of ``task``'s Hugging Face source; None for a task without one (local files, lm_eval)."""
    src = task.source
    if src is None or src.hf is None:
        return None
    cache = {} if cache is None else cache
    rep = SourceReport(task.name, src.hf, src.config_name, src.split, src.revision)

    def ask(key: tuple[Any, ...], fn: Any, *args: Any) -> Any:
        if key not in cache:
            try:
                cache[key] = ("ok", fn(*args))
            except Exception as e:  # noqa: BLE001 - the Hub's libraries raise many kinds; each is reported
                cache[key] = ("error", _first_line(e))
        return cache[key]

    state, got = ask(("dataset", src.hf, src.revision), hub.dataset, src.hf, src.revision)
    if state == "error":
        rep.problems.append(f"not found or not readable: {got}")
        return rep
    rep.resolved, rep.gated = got
    if rep.gated:
        rep.notes.append("gated: accept its terms on the Hub and log in (`hf auth login`) where prepare runs")
    if src.revision is None:
        rep.notes.append(f"no revision pinned (now {rep.resolved or '?'}): set source.revision to freeze it")
    state, configs = ask(("configs", src.hf, src.revision), hub.configs, src.hf, src.revision)
    if state == "error":
        rep.problems.append(f"its configs could not be listed: {configs}")
        return rep
    if src.config_name is not None and configs and src.config_name not in configs:
        rep.problems.append(f"no config {src.config_name!r} (configs: {', '.join(configs[:12])}"
                            f"{', ...' if len(configs) > 12 else ''})")
        return rep
    if src.config_name is None and len(configs) > 1 and "default" not in configs:
        rep.problems.append(f"it has several configs and none is named: set source.config_name to one of "
                            f"{', '.join(configs[:12])}{', ...' if len(configs) > 12 else ''}")
        return rep
    state, splits = ask(("splits", src.hf, src.config_name, src.revision, src.data_dir), hub.splits, src.hf,
                        src.config_name, src.revision, src.data_dir)
    if state == "error":
        rep.problems.append(f"its splits could not be listed: {splits}")
        return rep
    for what, split in (("split", src.split), ("fewshot_split", src.fewshot_split)):
        if split is not None and split not in splits:
            rep.problems.append(f"no {what} {split!r} (splits: {', '.join(splits)})")
    names = _fields(task)
    if names:
        state, cols = ask(("columns", src.hf, src.config_name, src.revision), hub.columns, src.hf, src.config_name,
                          src.revision)
        if state == "error" or cols is None:
            rep.notes.append(f"its columns are not in the Hub's metadata; {', '.join(names)} not checked")
        else:
            for name in names:
                if name not in cols:
                    rep.problems.append(f"no column {name!r} (columns: {', '.join(cols)})")
    return rep


def check_suite(suite: SuiteConfig, tasks: Sequence[TaskConfig], hub: HubResolver) -> list[SourceReport]:
    cache: dict[Any, Any] = {}
    return [r for r in (check_task(t, hub, cache) for t in tasks) if r is not None]


class LiveHub:
    """:class:`HubResolver` over ``huggingface_hub`` and ``datasets`` (metadata only)."""

    def dataset(self, repo: str, revision: str | None) -> tuple[str | None, bool]:
        from huggingface_hub import HfApi

        info = HfApi().dataset_info(repo, revision=revision)
        return info.sha, bool(info.gated)

    def configs(self, repo: str, revision: str | None) -> list[str]:
        import datasets

        return list(datasets.get_dataset_config_names(repo, revision=revision))

    def splits(self, repo: str, config: str | None, revision: str | None, data_dir: str | None = None) -> list[str]:
        import datasets

        extra = {"data_dir": data_dir} if data_dir else {}
        return list(datasets.get_dataset_split_names(repo, config, revision=revision, **extra))

    def columns(self, repo: str, config: str | None, revision: str | None) -> list[str] | None:
        import datasets

        features = datasets.load_dataset_builder(repo, config, revision=revision).info.features
        return list(features) if features is not None else None


def live_hub() -> LiveHub:
    """The Hub, or a :class:`ConfigError` when this machine is set offline or cannot reach it."""
    from rescore.tasks.sources import _env_offline, hub_unreachable

    if _env_offline():
        raise ConfigError("prepare --check asks the Hugging Face Hub about each source, but the Hugging Face libraries "
                          "are set offline here (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)",
                          hint="unset them and run it where the network is reachable")
    why = hub_unreachable()
    if why:
        raise ConfigError(f"prepare --check asks the Hugging Face Hub about each source, but it is unreachable from "
                          f"this machine ({why})", hint="run it where the network is reachable")
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise ConfigError("prepare --check needs the 'datasets' package", hint="pip install 'rescore[data]'") from None
    return LiveHub()


__all__ = ["HubResolver", "LiveHub", "SourceReport", "check_suite", "check_task", "live_hub"]
