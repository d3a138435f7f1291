"""CPU scoring: extract -> per-row metric -> aggregate, three registries of frozen, versioned specs.

Public API::

    from rescore.score import metric, metrics, aggregators, extractors, Metric, score_store

Nothing under ``rescore.score`` imports torch, transformers or vllm (a test checks).
"""

from __future__ import annotations

from typing import Any

from rescore.score.spec import (
    Agg,
    Aggregator,
    Extractor,
    Metric,
    UnitInfo,
    aggregators,
    extractors,
    metric,
    metrics,
    register_metric,
)


def __getattr__(name: str) -> Any:
    # the engine pulls in the store; load it only when asked
    if name in ("score_store", "select_metrics", "build_results", "read_results", "read_scores", "ScoreReport"):
        from rescore.score import engine

        return getattr(engine, name)
    if name in ("load_plugin", "load_builtin", "load_entry_points"):
        from rescore.score import registry

        return getattr(registry, name)
    raise AttributeError(name)


__all__ = ["Agg", "Aggregator", "Extractor", "Metric", "UnitInfo", "aggregators", "extractors", "metric", "metrics",
           "register_metric", "score_store", "select_metrics", "build_results", "read_results", "read_scores",
           "load_plugin", "load_builtin", "load_entry_points"]
