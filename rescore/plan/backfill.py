"""Plan a checkpoint matrix against the store: every unit with its state, grouped into jobs of one checkpoint
(so each job loads its model once), sharded, and reduced to what is missing (:mod:`rescore.plan.executors` runs
the groups).

Sharding (``--shard i/N``) is over the groups of the *whole* plan, complete ones included, so every array task
sees the same list no matter how much of it other tasks have finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rescore.artifacts.store import Store
from rescore.errors import ConfigError
from rescore.gen.runner import UnitPlan, plan_units, unit_state
from rescore.plan.matrix import MatrixConfig, check_checkpoints, expand, suite_for


@dataclass
class PlannedUnit:
    plan: UnitPlan
    state: str  # complete | partial | missing
    rows_done: int
    rows_total: int | None
    bridge_for: str | None = None


def plan_matrix(store: Store, m: MatrixConfig, *, source: str, data_root: Path | None = None,
                allow_direct: bool = False, check_paths: bool = True) -> list[PlannedUnit]:
    """Every unit of the matrix in a stable order, with its state in the store (duplicates removed: a
    bridge checkpoint scored on a suite it already ran shares those units)."""
    checkpoints = expand(m)
    if check_paths:
        check_checkpoints(m, checkpoints, source)
    root = data_root if data_root is not None else (Path(m.data_root) if m.data_root else None)
    seen: set[str] = set()
    out: list[PlannedUnit] = []
    suites: dict[str, Any] = {}
    for c in checkpoints:
        for sname in c.suites:
            suite = suites.setdefault(sname, suite_for(m, sname))
            for p in plan_units(store, suite, [c.model], data_root=root, allow_direct=allow_direct, seeds=m.seeds):
                if p.run_id in seen:
                    continue
                seen.add(p.run_id)
                state, done, total = unit_state(store, p.run_id)
                out.append(PlannedUnit(p, state, done, total, c.bridge_for))
    return out


def group_units(units: Sequence[PlannedUnit], units_per_job: int = 0) -> list[list[PlannedUnit]]:
    """Groups of one checkpoint each (split into chunks of ``units_per_job`` when > 0), in plan order."""
    by_model: dict[str, list[PlannedUnit]] = {}
    for u in units:
        by_model.setdefault(u.plan.model.model_dump_json(), []).append(u)
    groups: list[list[PlannedUnit]] = []
    for us in by_model.values():
        if units_per_job > 0:
            groups += [us[i : i + units_per_job] for i in range(0, len(us), units_per_job)]
        else:
            groups.append(us)
    return groups


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r} is not i/N", hint="e.g. --shard 0/4 (i from 0 to N-1)") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text!r}: need 0 <= i < N", hint="e.g. --shard 0/4")
    return i, n


def shard_groups(groups: list[list[PlannedUnit]], shard: tuple[int, int] | None) -> list[list[PlannedUnit]]:
    if shard is None:
        return groups
    i, n = shard
    return groups[i::n]


def todo(groups: list[list[PlannedUnit]]) -> list[list[PlannedUnit]]:
    out = [[u for u in g if u.state != "complete"] for g in groups]
    return [g for g in out if g]
