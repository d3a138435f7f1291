"""What the stored distributions of planned units will take (a task's ``dist``), before anything runs: the
numbers ``rescore gen`` prints and checks when a unit starts (:func:`rescore.gen.runner.check_dist`), from the
same functions, with the checkpoint's tokenizer and config instead of its weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rescore.config import ModelConfig
from rescore.plan.backfill import PlannedUnit


@dataclass(frozen=True)
class DistCost:
    positions: int | None  # None: not known before the model loads
    bytes: int | None
    problem: str | None = None  # why gen would refuse the unit (None: it runs)
    note: str | None = None  # why the size is not known


def dist_costs(units: Sequence[PlannedUnit]) -> dict[str, DistCost]:
    """The cost of every unit still to run whose task stores distributions, by run id."""
    from rescore.gen.dist import request_type_problem

    out: dict[str, DistCost] = {}
    rules: dict[str, tuple[Any, int] | str] = {}
    for u in units:
        p = u.plan
        dist = p.task.dist
        if dist is None or u.state == "complete":
            continue
        if (bad := request_type_problem(p.task.name, p.request_type, dist)) is not None:
            out[p.run_id] = DistCost(None, None, problem=bad.message)
            continue
        key = p.model.model_dump_json()
        if key not in rules:
            rules[key] = _rules(p.model)
        got = rules[key]
        out[p.run_id] = DistCost(None, None, note=got) if isinstance(got, str) else _cost(p, *got)
    return out


def _cost(plan: Any, rules: Any, vocab: int) -> DistCost:
    from rescore import tasks as task_api
    from rescore.gen.dist import bytes_per_position, count_positions, size_problem

    dist = plan.task.dist
    requests = task_api.build_requests(plan.task, plan.data, rules.tokenizer)
    n = count_positions(rules, requests, dist)
    size = n * bytes_per_position(dist, vocab)
    bad = size_problem(plan.task.name, dist, n, size, len(requests))
    return DistCost(n, size, problem=bad.message if bad is not None else None)


def _rules(model: ModelConfig) -> tuple[Any, int] | str:
    """The request rules and output vocabulary of ``model`` from its loader's preview (tokenizer and config, no
    weights), or why they are not known before the model loads."""
    from rescore.gen.base import backends

    try:
        stores = getattr(backends.get(model.backend), "stores_dist", False)
    except Exception:
        stores = False
    if not stores:
        return f"the {model.backend} backend stores no distributions (gen refuses the unit)"
    try:
        from rescore.gen.base import backend_and_loader_options
        from rescore.gen.loaders import loaders
        from rescore.gen.units import RequestRules

        _, opts = backend_and_loader_options(backends.get(model.backend), model)
        preview = getattr(loaders.get(model.loader), "preview", None)
        if preview is None:
            return f"known when gen loads the model (the {model.loader} loader gives no preview)"
        got = preview(model, opts)
        return RequestRules(got.tokenizer, int(got.max_length), model_path=model.path), int(got.vocab)
    except Exception as e:  # a hub id, a missing or odd directory: gen says what is wrong when it loads it
        return f"not known before the model loads ({type(e).__name__})"

