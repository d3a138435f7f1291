"""Pass/fail policies for ``rescore compare``: the configuration (:mod:`rescore.report.policy` applies it).

A policy is YAML, either on its own or under a ``policy:`` key of another file (a checkpoint matrix)::

    policy:
      missing: fail            # a gated task/metric the checkpoint lacks fails (or: ignore)
      rules:
        - tier: tier2
          max_rel_regression: 0.005       # Tier2: no regression beyond 0.5% of the baseline value
        - tier: tier3
          no_material_regression: 0.01    # Tier3: the CI rules out a regression beyond 0.01
        - metric: word_perplexity
          max_rel_regression: 0.02        # a noisier metric gets its own bound
        - metric: ece
          skip: true                      # shown, never gated

Each row of a comparison is gated by **the most specific matching rule**: a rule that names a metric beats
one that names a task, which beats one that names a tier (selectors are globs; a rule may combine them).
Among equally specific rules the later one wins. A row that no rule matches is shown but not gated.

*Regression* is the change in the bad direction, from the metric's ``higher_is_better``:
``regression = -(value - base)`` when higher is better, ``value - base`` when lower is better (so a
perplexity that rises by 0.3 is a regression of 0.3). Checks (every check a rule names must hold):

- ``max_regression: X``           regression <= X (absolute, in the metric's units)
- ``max_rel_regression: X``       regression / |base| <= X (0.005 = 0.5%)
- ``no_material_regression: X``   *no material regression*: the confidence interval of the delta excludes
  any regression beyond X, i.e. the CI bound on the bad side (``ci_low`` when higher is better, ``ci_high``
  when lower is better) is no worse than X. A non-inferiority test: with few samples the CI is wide and
  the rule fails until the evidence is there.
- ``no_material_rel_regression: X``  the same bound, relative to |base|
- ``no_significant_regression: true`` (with ``alpha``, default 0.05): fails only when the delta is a
  regression *and* its paired-bootstrap p-value is below alpha
- ``skip: true``                  never gated
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rescore.errors import ConfigError

CHECKS = ("max_regression", "max_rel_regression", "no_material_regression", "no_material_rel_regression",
          "no_significant_regression")


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tier: str | None = Field(None, description="glob on the task's tier (tier2, tier3, ...)")
    task: str | None = Field(None, description="glob on the task name")
    metric: str | None = Field(None, description="glob on the metric name")
    max_regression: float | None = Field(None, ge=0, allow_inf_nan=False)
    max_rel_regression: float | None = Field(None, ge=0, allow_inf_nan=False)
    no_material_regression: float | None = Field(None, ge=0, allow_inf_nan=False)
    no_material_rel_regression: float | None = Field(None, ge=0, allow_inf_nan=False)
    no_significant_regression: bool = False
    alpha: float = Field(0.05, gt=0, lt=1)
    skip: bool = False

    @model_validator(mode="after")
    def _has_check(self) -> Rule:
        if not self.skip and not self.checks():
            raise ValueError(f"a rule needs at least one check ({', '.join(CHECKS)}) or skip: true")
        return self

    def checks(self) -> list[str]:
        """The checks this rule sets (a bound of 0 is a check: ``max_regression: 0`` means no regression)."""
        return [c for c in CHECKS if (getattr(self, c) is True if c == "no_significant_regression"
                                      else getattr(self, c) is not None)]

    @property
    def specificity(self) -> int:
        return 4 * (self.metric is not None) + 2 * (self.task is not None) + (self.tier is not None)

    def matches(self, tier: str | None, task: str, metric: str) -> bool:
        return all(pat is None or fnmatch.fnmatchcase("" if val is None else val, pat)
                   for pat, val in ((self.tier, tier), (self.task, task), (self.metric, metric)))

    def describe(self) -> str:
        sel = ", ".join(f"{k}={getattr(self, k)}" for k in ("tier", "task", "metric") if getattr(self, k) is not None)
        if self.skip:
            chk = "skip"
        else:
            chk = ", ".join(f"{c}={getattr(self, c)}" for c in self.checks())
        return f"{sel or '*'}: {chk}"


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule] = Field(default_factory=list)
    missing: Literal["fail", "ignore"] = "fail"

    def rule_for(self, tier: str | None, task: str, metric: str) -> Rule | None:
        best: Rule | None = None
        for r in self.rules:
            if r.matches(tier, task, metric) and (best is None or r.specificity >= best.specificity):
                best = r
        return best


def load_policy(path: str | Path) -> Policy:
    """A policy from a YAML file (the whole file, or its ``policy:`` mapping). Every problem is reported at once."""
    from rescore.config import read_yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"policy file {p} not found", hint="pass --policy PATH to a YAML file with 'rules:'")
    data = read_yaml(p)
    if isinstance(data, dict) and "policy" in data:
        data = data["policy"]
    return policy_from(data, str(p))


def policy_from(data: Any, source: str) -> Policy:
    """A policy from its parsed YAML mapping; every problem in one ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a policy is a mapping with 'rules:'", hint="see the README's compare section")
    try:
        return Policy(**data)
    except ValidationError as e:
        from rescore.config import format_validation_error

        raise ConfigError("; ".join(format_validation_error(e, source))) from None


__all__ = ["CHECKS", "Policy", "Rule", "load_policy", "policy_from"]
