"""Which metrics a scoring run computes: ``--metric NAME[:k=v,...]`` resolved against the registry, each
parameter checked against the metric function (its name, the type of its default, its annotation)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rescore.errors import ConfigError
from rescore.score.registry import load_builtin
from rescore.score.spec import Metric, metrics


def select_metrics(names: Sequence[str] | None = None, *, params: dict[str, dict[str, Any]] | None = None,
                   only: Iterable[Metric] | None = None) -> list[Metric]:
    """The metric specs to compute. ``names`` entries are ``name`` or ``name:key=value,...``; unknown names
    raise with a did-you-mean. Without names: every registered metric whose required parameters are set
    (or the ``only`` specs, e.g. a plugin's). ``params`` adds parameters to named metrics."""
    from rescore.score.spec import parse_metric_arg

    load_builtin()
    params = dict(params or {})
    chosen: list[Metric] = []
    if names:
        for arg in names:
            name, kw = parse_metric_arg(arg)
            spec = metrics.get(name)
            kw = {**params.pop(name, {}), **kw}
            check_params(spec, kw)
            if kw:
                spec = spec.with_params(name=spec.name if _keeps_name(spec, kw) else None, **kw)
            missing = spec.missing_params()
            if missing:
                raise ConfigError(f"metric {spec.name!r} needs parameter(s) {missing}",
                                  hint=f"pass them as --metric {spec.name}:{missing[0]}=VALUE")
            chosen.append(spec)
    else:
        base = list(only) if only is not None else [metrics.get(n) for n in metrics.names()]
        for spec in base:
            given = params.get(spec.name)
            if given:
                spec = spec.with_params(name=spec.name if _keeps_name(spec, given) else None, **given)
            if not spec.missing_params():
                chosen.append(spec)
    seen: dict[str, Metric] = {}
    for s in chosen:
        seen[s.name] = s
    return list(seen.values())


def check_params(spec: Metric, kw: dict[str, Any]) -> None:
    """Parameters given on the command line must be ones the metric's function takes, of the type of its
    default (an integer for ``k``): a bad one is a configuration error, not a failing metric."""
    import inspect

    try:
        sig = inspect.signature(spec.fn)
    except (TypeError, ValueError):
        return
    ps = [p for p in list(sig.parameters.values())[1:] if p.name != "unit"]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps):
        return
    by_name = {p.name: p for p in ps}
    current = spec.kw
    for k, v in kw.items():
        if k not in by_name:
            raise ConfigError(f"metric {spec.name!r} has no parameter {k!r}",
                              hint=f"its parameters: {', '.join(by_name) or 'none'}")
        ref = current.get(k, by_name[k].default)
        if ref is inspect.Parameter.empty or ref is None:
            continue
        ok = (isinstance(v, bool) if isinstance(ref, bool) else
              isinstance(v, int) and not isinstance(v, bool) if isinstance(ref, int) else
              isinstance(v, int | float) and not isinstance(v, bool) if isinstance(ref, float) else
              isinstance(v, type(ref)))
        if not ok:
            raise ConfigError(f"metric {spec.name!r}: parameter {k}={v!r} should be {type(ref).__name__} like its "
                              f"default {ref!r}", hint=f"e.g. --metric {spec.name}:{k}={ref!r}")
    spec.check_param_types(kw)  # against the function's annotations too (k: int | None takes no list)


def _keeps_name(spec: Metric, kw: dict[str, Any]) -> bool:
    # an input file (the reranker's scores) keeps the name: one reranker table per store, recomputed when
    # the file changes (its hash is part of the parameters); other parameters make a new name (pass_at_8)
    return set(kw) <= {"file"}
