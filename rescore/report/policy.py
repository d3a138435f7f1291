"""Apply a pass/fail policy (:mod:`rescore.plan.policy`, where its rules and checks are described) to one row of
a comparison."""

from __future__ import annotations

from rescore.plan.policy import Rule


def regression(delta: float, higher_is_better: bool) -> float:
    """The change in the bad direction (positive = worse)."""
    return (-delta if higher_is_better else delta) + 0.0  # + 0.0 turns -0.0 into 0.0


def evaluate(rule: Rule, *, base: float | None, delta: float | None, ci_low: float | None, ci_high: float | None,
             p_value: float | None, higher_is_better: bool) -> tuple[str, str]:
    """(status, reason): status is ``pass``, ``fail`` or ``skip``."""
    if rule.skip:
        return "skip", "skipped by policy"
    if delta is None or base is None:
        return "fail", "no value to compare"
    reg = regression(delta, higher_is_better)
    bound = None  # the worst regression the CI allows
    if ci_low is not None and ci_high is not None:
        bound = regression(ci_low if higher_is_better else ci_high, higher_is_better)
    fails: list[str] = []
    oks: list[str] = []

    def rel(x: float) -> float | None:
        return x / abs(base) if base not in (0, None) else None

    def check(ok: bool, text: str) -> None:
        (oks if ok else fails).append(text)

    if rule.max_regression is not None:
        check(reg <= rule.max_regression, f"regression {reg:.4g} {'<=' if reg <= rule.max_regression else '>'} {rule.max_regression:g}")
    if rule.max_rel_regression is not None:
        r = rel(reg)
        if r is None:
            check(reg <= 0, "baseline is 0: relative regression undefined, any regression fails")
        else:
            check(r <= rule.max_rel_regression, f"relative regression {r:.3%} {'<=' if r <= rule.max_rel_regression else '>'} {rule.max_rel_regression:.3%}")
    for key, relative in (("no_material_regression", False), ("no_material_rel_regression", True)):
        lim = getattr(rule, key)
        if lim is None:
            continue
        if bound is None:
            check(False, "no confidence interval (fewer than 2 shared samples)")
            continue
        b = rel(bound) if relative else bound
        if b is None:
            check(bound <= 0, "baseline is 0: relative bound undefined")
            continue
        shown = f"{b:.3%}" if relative else f"{b:.4g}"
        limit = f"{lim:.3%}" if relative else f"{lim:g}"
        check(b <= lim, f"CI allows a regression of {shown} {'<=' if b <= lim else '>'} {limit}")
    if rule.no_significant_regression:
        if p_value is None:
            check(reg <= 0, "no p-value (fewer than 2 shared samples)")
        else:
            sig = reg > 0 and p_value < rule.alpha
            check(not sig, f"{'significant' if sig else 'no significant'} regression (p={p_value:.3g}, alpha={rule.alpha:g})")
    if fails:
        return "fail", "; ".join(fails)
    return "pass", "; ".join(oks)


__all__ = ["evaluate", "regression"]
