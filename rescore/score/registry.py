"""Loading metric definitions: the built-in modules, entry points (group ``rescore.metrics``) and
``--plugin`` files or modules.

A plugin is a Python file (or importable module) that registers metrics with the
:func:`rescore.score.metric` decorator. :func:`load_plugin` returns the specs it registered, so
``rescore score --plugin my_metrics.py`` computes only those across the store.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path

from rescore.core import content_hash
from rescore.errors import ConfigError
from rescore.score import spec as _spec
from rescore.score.spec import Metric, metrics

BUILTIN = (
    "rescore.score.aggregate",
    "rescore.score.extract",
    "rescore.score.metrics_rolling",
    "rescore.score.metrics_choice",
    "rescore.score.metrics_answer",
    "rescore.score.metrics_sft",
    "rescore.score.metrics_dist",
)
ENTRY_POINT_GROUP = "rescore.metrics"

_loaded = False
_entry_points_loaded = False


def load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    for mod in BUILTIN:
        importlib.import_module(mod)
    _loaded = True


def load_entry_points() -> list[Metric]:
    """Import every ``rescore.metrics`` entry point (a module, or a callable that registers metrics)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    load_builtin()
    added: list[Metric] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        with _capture(added):
            try:
                obj = ep.load()
                if callable(obj) and not isinstance(obj, type) and not hasattr(obj, "metric_spec"):
                    obj()
            except (Exception, SystemExit) as e:
                raise ConfigError(f"cannot load metric entry point {ep.name!r} ({ep.value}): {failure(e)}",
                                  hint="fix or uninstall the package that provides it") from None
    return added


def load_plugin(ref: str) -> list[Metric]:
    """Import a plugin file (``path/to/file.py``) or module (``package.module``); return the metrics it
    registered (in registration order, later registrations of a name replace earlier ones)."""
    load_builtin()
    builtin = {n: metrics.get(n) for n in metrics.names() if _is_builtin(metrics.get(n))}
    added: list[Metric] = []
    with _capture(added):
        p = Path(ref)
        if p.suffix == ".py" or p.exists():
            if not p.is_file():
                raise ConfigError(f"plugin file not found: {p}", hint="give a .py file or an importable module name")
            name = f"rescore_plugin_{content_hash(str(p.resolve()), 12)}"
            spec = importlib.util.spec_from_file_location(name, p)
            if spec is None or spec.loader is None:
                raise ConfigError(f"cannot import plugin {p}", hint="give a .py file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except ConfigError:
                raise
            except (Exception, SystemExit) as e:  # sys.exit() in a plugin is its failure, not the command's exit
                sys.modules.pop(name, None)
                raise ConfigError(f"plugin {p} failed to import: {failure(e)}", hint="fix the plugin file") from None
        else:
            try:
                importlib.import_module(ref)
            except ModuleNotFoundError as e:
                raise ConfigError(f"cannot import plugin module {ref!r}: {e}",
                                  hint="give a .py file path or an importable module name") from None
            except ConfigError:
                raise
            except (Exception, SystemExit) as e:
                raise ConfigError(f"plugin {ref} failed to import: {failure(e)}", hint="fix the plugin module") from None
    if not added:
        raise ConfigError(f"plugin {ref} registered no metric",
                          hint="decorate a function with @rescore.score.metric(version=..., request_type=...)")
    taken = sorted({m.name for m in added if m.name in builtin})
    if taken:
        for n in taken:  # keep the built-in definitions: results must not mix two meanings of one name
            metrics.register(n, builtin[n])
        raise ConfigError(f"plugin {ref} defines {', '.join(repr(n) for n in taken)}, the name of a built-in metric",
                          hint="give the plugin's metric a name of its own (e.g. 'my_acc')")
    seen: dict[str, Metric] = {}
    for m in added:
        seen[m.name] = m
    return list(seen.values())


def failure(e: BaseException) -> str:
    """What went wrong in plugin code, in words: ``sys.exit(3)`` reads "it called sys.exit(3)"."""
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r})"
    return f"{type(e).__name__}: {e}"


def plugin_of(spec: Metric) -> str | None:
    """The file or module a metric's function comes from, when it is not a built-in (None for built-ins)."""
    if _is_builtin(spec):
        return None
    mod = str(getattr(spec.fn, "__module__", "") or "")
    return str(getattr(sys.modules.get(mod), "__file__", None) or mod) or None


def _is_builtin(spec: Metric) -> bool:
    return str(getattr(spec.fn, "__module__", "")).startswith("rescore.")


class _capture:
    def __init__(self, into: list[Metric]) -> None:
        self.into = into

    def __enter__(self) -> None:
        _spec._listeners.append(self.into.append)

    def __exit__(self, *exc: object) -> None:
        _spec._listeners.remove(self.into.append)
