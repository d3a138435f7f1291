"""The mixed-run guard: runs are put side by side only when they agree on precision, dtype, tokenizer hash
and (for chat tasks) chat template hash, where both record it; otherwise :class:`MixedRunsError` names the runs that differ
(``--allow-mixed`` turns the refusal into a warning)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rescore.artifacts.store import Store, Unit
from rescore.errors import UserError
from rescore.report.catalog import Catalog, Checkpoint, build_catalog

GUARDED = ("precision", "dtype", "tokenizer_hash", "chat_template_hash")


class MixedRunsError(UserError):
    """Runs with different precision, dtype, tokenizer or chat template would be compared."""


# -- the precision guard --------------------------------------------------------------------------------------
def _uses_chat(unit: Unit) -> bool:
    cfg = (unit.manifest.get("task") or {}).get("config") or {}
    res = ((unit.manifest.get("resolved") or {}).get("task") or {})
    return bool(cfg.get("chat") or res.get("chat"))


def guard_mixed(cat: Catalog, ckpts: Sequence[Checkpoint], *, allow_mixed: bool = False) -> list[str]:
    """Refuse (MixedRunsError) when runs of the same task differ in precision, dtype, tokenizer hash or
    (chat tasks) chat template hash. With ``allow_mixed`` the differences are returned as warnings."""
    diffs: dict[str, dict[str, dict[str, str]]] = {}  # field -> value -> label -> example run id
    tasks = sorted({t for c in ckpts for t in cat.units.get(c, {})})
    for task in tasks:
        for fld in GUARDED:
            seen: dict[str, dict[str, str]] = {}
            for c in ckpts:
                for u in cat.units.get(c, {}).get(task, {}).values():
                    if fld == "chat_template_hash" and not _uses_chat(u):
                        continue
                    val = (u.manifest.get("model") or {}).get(fld)
                    if val is None:  # not recorded (an imported run has no tokenizer hash): nothing to compare
                        continue
                    val = str(val)
                    seen.setdefault(val, {}).setdefault(cat.labels[c], u.run_id[:12])
            if len(seen) > 1:
                for val, who in seen.items():
                    diffs.setdefault(fld, {}).setdefault(val, {}).update(who)
    if not diffs:
        return []
    parts = []
    for fld, vals in diffs.items():
        groups = "; ".join(f"{val}: " + ", ".join(f"{lab} (run {rid})" for lab, rid in sorted(who.items()))
                           for val, who in sorted(vals.items()))
        parts.append(f"{fld} differs ({groups})")
    msg = "runs differ: " + " | ".join(parts)
    if not allow_mixed:
        raise MixedRunsError(f"refusing to put runs side by side, {msg}",
                             hint="select runs that agree with --models or --suite, "
                                  "or pass --allow-mixed to put them side by side anyway")
    return [msg]



def guard_result_rows(store: Store, rows: Sequence[dict[str, Any]], *, allow_mixed: bool = False) -> list[str]:
    """The precision guard for a results table: the checkpoints and tasks of ``rows`` must agree in
    precision, dtype, tokenizer and chat template (see :func:`guard_mixed`)."""
    if not rows:
        return []
    tasks = sorted({str(r["task"]) for r in rows})
    shown = {(str(r["model"]), r.get("step")) for r in rows}
    try:
        cat = build_catalog(store, tasks=tasks)
    except UserError:
        return []
    ckpts = [c for c in cat.checkpoints if (c.name, c.step) in shown]
    try:
        return guard_mixed(cat, ckpts, allow_mixed=allow_mixed)
    except MixedRunsError as e:
        raise MixedRunsError(e.message, hint="select runs that agree with --model or --task, "
                                             "or pass --allow-mixed to show them side by side anyway") from None
