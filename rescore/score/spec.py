"""The three scoring steps as frozen specs, one registry each.

    extract   (text -> answer)            :data:`extractors`   ``Extractor``
    per-row   (pa.Table -> row values)    :data:`metrics`      ``Metric``
    aggregate (row values -> Agg)         :data:`aggregators`  ``Aggregator``

A :class:`Metric` names its aggregator, so corpus-level metrics (perplexities, bits per byte, ECE) are
aggregated from per-row *sufficient statistics* (e.g. a ``num``/``den`` pair per row), never as a mean of
per-row values. Aggregators are mergeable: ``finish(merge(stats(a), stats(b))) == finish(stats(a + b))``,
so shards aggregate to the whole.

Nothing here (or anywhere under ``rescore.score``) imports torch, transformers or vllm.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa

from rescore.core import content_hash
from rescore.errors import ConfigError
from rescore.registry import NAME_RE, Registry

Cols = Mapping[str, np.ndarray]
"""Per-row values handed to an aggregator: ``value`` plus the metric's auxiliary columns (numpy arrays,
null rows already removed)."""

Params = tuple[tuple[str, Any], ...]


def freeze_params(params: Mapping[str, Any] | None) -> Params:
    """Parameters as a sorted tuple of items, so specs stay hashable and comparable."""
    if not params:
        return ()
    return tuple(sorted((str(k), _freeze(v)) for k, v in params.items()))


def _freeze(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return v


# -- aggregation --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Agg:
    """One aggregate value. ``stderr``/``ci_*`` are None where not defined (never a sentinel float)."""

    value: float | None
    stderr: float | None
    n: int
    ci_low: float | None = None
    ci_high: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "stderr": self.stderr, "n": self.n, "ci_low": self.ci_low, "ci_high": self.ci_high}


Stats = dict[str, Any]


@dataclass(frozen=True)
class Aggregator:
    """``stats`` reduces rows to mergeable sufficient statistics, ``merge`` combines two of them and
    ``finish`` turns them into an :class:`Agg`. Aggregators that need the rows themselves (bootstrap)
    set ``direct`` instead; they are not mergeable."""

    name: str
    description: str
    stats: Callable[[Cols, Mapping[str, Any]], Stats] | None = None
    merge: Callable[[Stats, Stats], Stats] | None = None
    finish: Callable[[Stats, Mapping[str, Any]], Agg] | None = None
    direct: Callable[[Cols, Mapping[str, Any]], Agg] | None = None
    needs: tuple[str, ...] = ("value",)

    @property
    def mergeable(self) -> bool:
        return self.direct is None

    def __call__(self, cols: Cols, params: Mapping[str, Any] | None = None) -> Agg:
        p = dict(params or {})
        if self.direct is not None:
            return self.direct(cols, p)
        assert self.stats is not None and self.finish is not None
        return self.finish(self.stats(cols, p), p)

    def combine(self, parts: list[Cols], params: Mapping[str, Any] | None = None) -> Agg:
        """Aggregate several shards as if they were one table (mergeable aggregators only)."""
        if not self.mergeable:
            raise ValueError(f"aggregator {self.name!r} is not mergeable")
        assert self.stats is not None and self.merge is not None and self.finish is not None
        p = dict(params or {})
        acc = self.stats(parts[0], p)
        for part in parts[1:]:
            acc = self.merge(acc, self.stats(part, p))
        return self.finish(acc, p)


aggregators: Registry[Aggregator] = Registry("aggregator")


# -- extraction ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Extractor:
    """Text -> answer string (or None when nothing is found). ``with_params`` returns a new spec.

    ``arrow``, when set, is the same extraction over a whole Arrow string array at once (no nulls in, one
    answer per text out); metrics name an extractor and call :meth:`extract_all`, never a regex of their own."""

    name: str
    fn: Callable[..., str | None]
    description: str = ""
    params: Params = ()
    arrow: Callable[[pa.Array], pa.Array] | None = field(default=None, compare=False)

    def __call__(self, text: str | None) -> str | None:
        return self.fn("" if text is None else text, **dict(self.params))

    def extract_all(self, texts: pa.Array) -> pa.Array:
        """The answer of every text of ``texts`` (a string array without nulls); nulls where none is found."""
        if self.arrow is not None and not self.params:
            return self.arrow(texts)
        return pa.array([self(t) for t in texts.to_pylist()], pa.string())

    def with_params(self, **params: Any) -> Extractor:
        return replace(self, params=freeze_params({**dict(self.params), **params}))


extractors: Registry[Extractor] = Registry("extractor")


# -- per-row metrics ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnitInfo:
    """What a metric may know about the unit it scores (for metrics with ``needs_unit``)."""

    run_id: str
    manifest: Mapping[str, Any] = field(default_factory=dict)
    read: Callable[[list[str]], pa.Table] | None = field(default=None, compare=False)
    """Reads further columns of the unit (rows in the same order as the table the metric got)."""
    unit: Any = field(default=None, compare=False)
    """The store's :class:`rescore.artifacts.store.Unit`, for metrics of its side files (stored distributions)."""


@dataclass(frozen=True)
class Metric:
    """A versioned per-row metric.

    ``fn(table, **params)`` gets a ``pa.Table`` holding ``columns`` (plus ``sample_id``) and returns the
    per-row values: a 1-D array/list (NaN or None = the metric does not apply to that row) or a dict of
    named arrays with ``"value"`` first and auxiliary columns after (e.g. ``num``/``den`` for ratio
    aggregators). Bump ``version`` whenever the values it produces change: stored scores of older
    versions then count as missing.
    """

    name: str
    fn: Callable[..., Any]
    columns: tuple[str, ...]
    request_type: str
    higher_is_better: bool = True
    aggregator: str = "mean"
    version: int = 1
    description: str = ""
    params: Params = ()
    agg_params: Params = ()
    required_params: tuple[str, ...] = ()
    needs_unit: bool = False
    lm_eval_key: str | None = None
    families: tuple[str, ...] = ()  # the task families whose units it applies to (empty: every family)
    also_request_types: tuple[str, ...] = ()  # further request types whose units it scores
    available: Callable[[], str | None] = field(default=lambda: None, compare=False)
    """Returns None when the metric can run here, else why not (e.g. an optional package is missing)."""
    applies: Callable[[Mapping[str, Any]], bool] | None = field(default=None, compare=False)
    """Whether it scores a unit (given the unit's manifest), after request type and families; None: it does."""

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name) or ".." in self.name:
            raise ConfigError(f"invalid metric name {self.name!r}", hint="use [a-z0-9_.-], starting with a letter or digit")
        if not isinstance(self.version, int) or self.version < 1:
            raise ConfigError(f"metric {self.name!r}: version must be a positive integer, got {self.version!r}")
        if any(rt not in ("loglikelihood", "rolling", "generate") for rt in (self.request_type, *self.also_request_types)):
            raise ConfigError(f"metric {self.name!r}: unknown request_type {self.request_type!r}",
                              hint="one of loglikelihood, rolling, generate")

    # -- parameters --
    @property
    def kw(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.params}

    @property
    def agg_kw(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.agg_params}

    def with_params(self, name: str | None = None, **params: Any) -> Metric:
        """A new spec with ``params`` merged in. The name changes (``base_k4``) unless given, so each
        parameterisation is stored and reported separately."""
        merged = {**self.kw, **params}
        new_name = name or derived_name(self.name, params)
        return replace(self, name=new_name, params=freeze_params(merged))

    def check_param_types(self, kw: Mapping[str, Any]) -> None:
        """Each value of ``kw`` against the annotation of the metric function's parameter (``k: int | None``
        takes an integer, not ``[1, 2]``), where the function is annotated: a :class:`ConfigError` naming the
        parameter, the type and an example otherwise. Unannotated parameters are left to the caller."""
        import typing

        from pydantic import TypeAdapter, ValidationError

        try:
            hints = typing.get_type_hints(self.fn)
        except Exception:  # noqa: BLE001 - annotations that do not resolve here are not checked
            return
        for k, v in kw.items():
            hint = hints.get(k)
            if hint is None or hint is Any:
                continue
            try:
                TypeAdapter(hint).validate_python(v, strict=True)
            except ValidationError:
                shown = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
                raise ConfigError(f"metric {self.name!r}: parameter {k}={v!r} should be {shown}",
                                  hint=f"one value per --metric, e.g. --metric {self.name}:{k}=VALUE; repeat "
                                       f"--metric for several") from None

    def missing_params(self) -> list[str]:
        have = {k for k, v in self.params if v is not None}
        return [p for p in self.required_params if p not in have]

    def params_hash(self) -> str:
        """Identifies the parameterisation (part of a stored score's identity, with the version)."""
        return content_hash({"params": [list(p) for p in self.params], "agg": [list(p) for p in self.agg_params],
                             "aggregator": self.aggregator, "extra": self._param_fingerprint()}, 16)

    def _param_fingerprint(self) -> Any:
        # a metric that reads a file (the reranker) includes the file's content hash
        fp = getattr(self.fn, "param_fingerprint", None)
        return fp(self.kw) if fp is not None else None

    @property
    def file_name(self) -> str:
        return f"{self.name}@{self.version}.arrow"

    # -- computing --
    def compute(self, table: pa.Table, unit: UnitInfo | None = None) -> dict[str, np.ndarray | pa.Array]:
        """Run ``fn`` and normalise its output to a dict of equally long columns, ``value`` first."""
        kw = self.kw
        if self.needs_unit:
            kw["unit"] = unit or UnitInfo(run_id="", manifest={})
        out = self.fn(table, **kw)
        cols = out if isinstance(out, Mapping) else {"value": out}
        if "value" not in cols:
            raise ValueError(f"metric {self.name!r} returned columns {list(cols)} without 'value'")
        norm: dict[str, np.ndarray | pa.Array] = {}
        for k, v in cols.items():
            if k == "sample_id":
                raise ValueError(f"metric {self.name!r}: 'sample_id' is reserved (score rows follow the unit's rows, "
                                 "which hold the sample ids); do not return it")
            norm[k] = _as_column(v, k == "value")
            if len(norm[k]) != table.num_rows:
                raise ValueError(f"metric {self.name!r} returned {len(norm[k])} values for column {k!r}, "
                                 f"expected {table.num_rows} (one per row)")
        return norm


def _thaw(v: Any) -> Any:
    if isinstance(v, tuple):
        if v and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in v):
            return {k: _thaw(x) for k, x in v}
        return [_thaw(x) for x in v]
    return v


def _as_column(v: Any, is_value: bool) -> np.ndarray | pa.Array:
    if isinstance(v, pa.ChunkedArray):
        v = v.combine_chunks()
    if isinstance(v, pa.Array):
        if is_value:
            return np.asarray(v.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        return v
    if isinstance(v, np.ndarray):
        return v.astype(np.float64) if is_value else v
    if is_value:
        return np.array([np.nan if x is None else float(x) for x in v], dtype=np.float64)
    return pa.array(list(v))


_SAFE = re.compile(r"[^a-z0-9_.-]+")


def derived_name(base: str, params: Mapping[str, Any]) -> str:
    """``pass_at_k`` + {k: 4} -> ``pass_at_4`` (also ``maj_at_n``); otherwise ``base.k4``-style suffixes;
    a file path parameter contributes its stem."""
    m = re.fullmatch(r"(.+_at)_[kn]", base)
    if m and set(params) == {"k"} and isinstance(params["k"], int):
        return f"{m.group(1)}_{params['k']}"
    parts = []
    for k, v in sorted(params.items()):
        if isinstance(v, str) and ("/" in v or "." in v):
            v = v.rsplit("/", 1)[-1].split(".", 1)[0]
        parts.append(_SAFE.sub("-", f"{k}{v}".lower()).strip("-"))
    return base + ("." + ".".join(p for p in parts if p) if parts else "")


metrics: Registry[Metric] = Registry("metric")


def register_metric(spec: Metric) -> Metric:
    """Add (or replace) a metric in :data:`metrics`; returns it."""
    metrics.register(spec.name, spec)
    _on_register(spec)
    return spec


_listeners: list[Callable[[Metric], None]] = []


def _on_register(spec: Metric) -> None:
    for f in list(_listeners):
        f(spec)


def metric(
    name: str | None = None,
    *,
    version: int,
    request_type: str,
    columns: tuple[str, ...] | list[str] = (),
    higher_is_better: bool = True,
    aggregator: str = "mean",
    description: str | None = None,
    params: Mapping[str, Any] | None = None,
    agg_params: Mapping[str, Any] | None = None,
    required_params: tuple[str, ...] = (),
    needs_unit: bool = False,
    lm_eval_key: str | None = None,
    available: Callable[[], str | None] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator that registers a per-row metric (the built-in ones too). This is the plugin API::

        from rescore.score import metric

        @metric(version=1, request_type="generate", columns=["candidates"], higher_is_better=False)
        def answer_chars(table):
            import pyarrow.compute as pc
            return pc.utf8_length(pc.list_element(table["candidates"], 0))

    The function is returned unchanged (its spec is ``fn.metric_spec``, the last one when several
    decorators register one function under several names), so it stays testable. Other packages register
    theirs through the entry-point group ``rescore.metrics`` (the module that holds the decorated functions).
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        desc = description if description is not None else (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
        spec = Metric(
            name=name or fn.__name__, fn=fn, columns=tuple(columns), request_type=request_type,
            higher_is_better=higher_is_better, aggregator=aggregator, version=version, description=desc,
            params=freeze_params(params), agg_params=freeze_params(agg_params), required_params=tuple(required_params),
            needs_unit=needs_unit, lm_eval_key=lm_eval_key,
            **({"available": available} if available is not None else {}),  # type: ignore[arg-type]
        )
        register_metric(spec)
        fn.metric_spec = spec  # type: ignore[attr-defined]
        return fn

    return deco


def parse_metric_arg(arg: str) -> tuple[str, dict[str, Any]]:
    """``name``, ``name:key=value,key=value`` (values parsed as YAML: ``k=[1,2]``, ``ks={a: 1}``) or
    ``name:{key: value, ...}`` (a YAML flow mapping) from the command line."""
    import yaml

    name, _, rest = arg.partition(":")
    rest = rest.strip()
    params: dict[str, Any] = {}
    if rest.startswith("{"):
        data = _yaml_value(rest, arg, "parameters")
        if not isinstance(data, dict) or not all(isinstance(k, str) and k for k in data):
            raise ConfigError(f"metric parameters {rest!r} in {arg!r} are not a mapping of names to values",
                              hint="write NAME:{key: value, key: value}")
        params = data
    else:
        for item in filter(None, (s.strip() for s in _split_top_level(rest))):
            k, eq, v = item.partition("=")
            if not eq or not k.strip():
                raise ConfigError(f"bad metric parameter {item!r} in {arg!r}", hint="write NAME:key=value,key=value")
            try:
                params[k.strip()] = _yaml_value(v, arg, f"parameter {k.strip()!r}")
            except yaml.YAMLError:
                params[k.strip()] = v  # not YAML (e.g. a path with a colon and a space): the text itself
    from rescore.config import value_problem

    for k, v in params.items():
        why = value_problem(v)
        if why:  # parameters are recorded in score files (JSON metadata) and results
            raise ConfigError(f"metric parameter {k!r} in {arg!r}: {why}", hint="write NAME:key=value,key=value")
    return name.strip(), params


def _yaml_value(text: str, arg: str, what: str) -> Any:
    """``text`` parsed as YAML; a flow mapping's syntax error is a :class:`ConfigError`, a plain value's is
    raised as it is (the caller keeps the text)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"metric {what} in {arg!r} is nested too deeply to read") from None
    except yaml.YAMLError as e:
        if what != "parameters":
            raise
        raise ConfigError(f"metric parameters {text!r} in {arg!r} are not valid YAML: {getattr(e, 'problem', e)}",
                          hint="write NAME:{key: value, key: value}") from None


def _split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside brackets, braces and quotes (``k=[1,2],x=1`` -> two items)."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items
