"""rescore compare: paired bootstrap with known answers, policies and exit codes, baseline names, precision guard.

Stores here are constructed by hand (manifests and per-row score files with values chosen so the answer is
known), so every number below can be derived on paper.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import invoke

from rescore.artifacts.store import Store
from rescore.errors import ConfigError
from rescore.plan.policy import Policy, Rule, load_policy
from rescore.report.bootstrap import aggregate_fn, paired_bootstrap, two_sided_p
from rescore.report.compare import MixedRunsError, build_catalog, compare, resolve_baseline
from rescore.report.policy import evaluate


# -- constructed stores ---------------------------------------------------------------------------------
class ToyStore:
    """Writes complete units (manifest only) and per-row score files the way the scorer does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0

    def unit(self, *, name: str, step: int | None, task: str = "toy", tier: str = "tier3", seed: int = 0,
             precision: str = "fp32", dtype: str = "float32", tokenizer: str = "tok1", template: str | None = "tpl1",
             chat: bool = False, stage: str | None = "s1") -> str:
        self.n += 1
        run_id = f"{self.n:04x}" + "ab" * 8
        d = self.root / "gen" / run_id
        d.mkdir(parents=True)
        manifest = {
            "run_id": run_id, "schema_version": 1, "status": "complete", "request_type": "loglikelihood",
            "model": {"name": name, "path": f"/ckpt/{name}/{step}", "backend": "fake", "precision": precision,
                      "step": step, "stage": stage, "dtype": dtype, "fingerprint": f"fp-{name}-{step}",
                      "tokenizer_hash": tokenizer, "chat_template_hash": template},
            "suite": "toy", "task": {"name": task, "family": "multiple_choice", "tier": tier, "config": {"chat": chat}},
            "seed": seed, "rows_parquet_sha256": f"sha-{run_id}", "completed_at": f"2026-01-01T00:00:{self.n:02d}+00:00",
            "git_rev": "deadbeef", "command": "rescore gen toy",
        }
        (d / "manifest.json").write_text(json.dumps(manifest))
        return run_id

    def scores(self, run_id: str, metric: str, ids: list[str], *, aggregator: str = "mean", hib: bool = True,
               version: int = 1, params_hash: str = "p", **cols: Any) -> None:
        d = self.root / "scores" / run_id
        d.mkdir(parents=True, exist_ok=True)
        value = np.asarray(cols.pop("value"), dtype=np.float64)
        meta = {"metric": metric, "version": version, "params_hash": params_hash, "aggregator": aggregator, "agg_params": {},
                "higher_is_better": hib, "source_sha256": f"sha-{run_id}",
                "aggregates": {"all": {"value": float(np.nanmean(value)), "n": int(value.size)}}}
        t = pa.table({"sample_id": ids, "value": value, **{k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}})
        pq.write_table(t.replace_schema_metadata({b"rescore": json.dumps(meta).encode()}), d / f"{metric}@{version}.parquet")


def ids(n: int) -> list[str]:
    return [f"s{i:05d}" for i in range(n)]


@pytest.fixture
def toy(tmp_path: Path) -> ToyStore:
    return ToyStore(tmp_path / "store")


def shifted_store(toy: ToyStore, shift: float, n: int = 200, hib: bool = True) -> None:
    """base: values v in [0, 1); model at step 100: v + shift on every row."""
    rng = np.random.default_rng(1)
    v = rng.random(n)
    b = toy.unit(name="bridge", step=10)
    m = toy.unit(name="ckpt", step=100)
    toy.scores(b, "toy_score", ids(n), value=v, hib=hib)
    toy.scores(m, "toy_score", ids(n), value=v + shift, hib=hib)


# -- the bootstrap itself -------------------------------------------------------------------------------
def test_constant_shift_has_a_point_ci_and_tiny_p() -> None:
    # Paired: a shift of 0.1 on every row shows in every resample, so the CI collapses to 0.1 and
    # p = 2 / (B + 1). An unpaired bootstrap would give a CI as wide as the spread of v.
    v = np.random.default_rng(0).random(500)
    _, mean = aggregate_fn("mean")
    res = paired_bootstrap([{"value": v}], [{"value": v + 0.1}], mean, resamples=999, seed=3)
    assert res.delta == pytest.approx(0.1)
    assert res.ci_low == pytest.approx(0.1) and res.ci_high == pytest.approx(0.1)
    assert res.p_value == pytest.approx(2 / 1000)
    assert res.n == 500 and res.resamples == 999


def test_identical_rows_are_not_significant() -> None:
    v = np.random.default_rng(0).integers(0, 2, 300).astype(float)
    _, mean = aggregate_fn("mean")
    res = paired_bootstrap([{"value": v}], [{"value": v.copy()}], mean, resamples=500)
    assert res.delta == 0 and res.ci_low == 0 and res.ci_high == 0
    assert res.p_value == 1.0


def test_ci_and_p_match_the_normal_approximation() -> None:
    # Differences d_i with mean exactly mu and population sd exactly sd: the bootstrap distribution of the
    # mean difference is ~ N(mu, sd^2 / n); with mu = 1.5 se the two-sided p is 2 * (1 - Phi(1.5)) = 0.1336.
    n, sd = 4000, 0.5
    z = np.random.default_rng(7).standard_normal(n)
    z = (z - z.mean()) / z.std()
    se = sd / math.sqrt(n)
    mu = 1.5 * se
    base = np.random.default_rng(8).random(n)
    model = base + mu + sd * z
    _, mean = aggregate_fn("mean")
    res = paired_bootstrap([{"value": base}], [{"value": model}], mean, resamples=4000, seed=11)
    assert res.delta == pytest.approx(mu)
    assert res.stderr == pytest.approx(se, rel=0.06)
    assert res.ci_low == pytest.approx(mu - 1.959964 * se, abs=0.12 * se)
    assert res.ci_high == pytest.approx(mu + 1.959964 * se, abs=0.12 * se)
    assert res.p_value == pytest.approx(0.1336, abs=0.03)


def test_big_difference_is_significant_and_seeded() -> None:
    rng = np.random.default_rng(2)
    base = (rng.random(400) < 0.5).astype(float)
    model = np.where(rng.random(400) < 0.6, 1.0, base)  # ~30% of rows flip to correct, none back
    _, mean = aggregate_fn("mean")
    a = paired_bootstrap([{"value": base}], [{"value": model}], mean, resamples=1000, seed=5)
    b = paired_bootstrap([{"value": base}], [{"value": model}], mean, resamples=1000, seed=5)
    assert a == b  # seeded: bit for bit
    assert a.p_value is not None and a.p_value < 0.01
    assert a.ci_low is not None and a.ci_low > 0


def test_perplexity_uses_the_ratio_of_sums() -> None:
    # Corpus perplexity is exp(-sum(num) / sum(den)), not a mean of per-row perplexities.
    num_b = np.array([-10.0, -30.0, -20.0, -40.0])
    den = np.array([10.0, 10.0, 20.0, 20.0])
    num_m = num_b * 0.9  # every row's logprob 10% closer to 0: lower perplexity
    needs, ppl = aggregate_fn("perplexity")
    assert needs == ("num", "den")
    res = paired_bootstrap([{"num": num_b, "den": den}], [{"num": num_m, "den": den}], ppl, resamples=300)
    assert res.base == pytest.approx(math.exp(100 / 60))
    assert res.value == pytest.approx(math.exp(90 / 60))
    assert res.delta == pytest.approx(math.exp(1.5) - math.exp(100 / 60))
    assert res.ci_high is not None and res.ci_high < 0  # every resample improves


def test_seeds_are_averaged_per_side() -> None:
    _, mean = aggregate_fn("mean")
    z = np.zeros(10)
    res = paired_bootstrap([{"value": z}, {"value": z + 0.2}], [{"value": z + 0.5}, {"value": z + 0.3}], mean,
                           resamples=50)
    assert res.base == pytest.approx(0.1) and res.value == pytest.approx(0.4) and res.delta == pytest.approx(0.3)


def test_other_aggregators_go_through_the_scorer_registry() -> None:
    conf = np.array([0.9, 0.8, 0.6, 0.95, 0.7, 0.55])
    correct = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    needs, ece = aggregate_fn("ece")
    assert set(needs) == {"conf", "correct"}
    cols = {"value": correct, "conf": conf, "correct": correct}
    res = paired_bootstrap([cols], [dict(cols)], ece, resamples=40)
    assert res.delta == 0 and res.p_value == 1.0


def test_two_sided_p() -> None:
    assert two_sided_p(np.ones(99)) == pytest.approx(0.02)
    assert two_sided_p(np.zeros(99)) == 1.0
    assert two_sided_p(np.r_[np.ones(50), -np.ones(49)]) == 1.0


# -- compare on a constructed store ----------------------------------------------------------------------
def test_compare_rows_on_a_constructed_store(toy: ToyStore) -> None:
    shifted_store(toy, -0.05)
    res = compare(Store(toy.root), "bridge", resamples=500)
    (row,) = res.rows
    assert (row.model, row.baseline, row.task, row.metric, row.tier) == ("ckpt@100", "bridge@10", "toy", "toy_score", "tier3")
    assert row.delta == pytest.approx(-0.05)
    assert row.rel_delta == pytest.approx(-0.05 / row.base)
    assert row.ci_low == pytest.approx(-0.05) and row.ci_high == pytest.approx(-0.05)
    assert row.n == 200 and row.status == ""


def test_compare_uses_the_metrics_registered_now(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``score`` registers a store's lm-eval metrics with versions of that store's task configs: a compare
    that follows another store's compare in the same process reads the versions registered now."""
    from dataclasses import replace

    from rescore.score.registry import load_builtin
    from rescore.score.spec import metrics

    load_builtin()
    old = metrics.get("acc")
    for i, version in enumerate((7, 8)):
        monkeypatch.setitem(metrics._entries, "acc", replace(old, version=version))
        st = ToyStore(tmp_path / f"store{i}")
        for name, step in (("bridge", 1), ("ckpt", 2)):
            st.scores(st.unit(name=name, step=step), "acc", ids(4), value=np.ones(4), version=version,
                      params_hash=old.params_hash())
        res = compare(Store(st.root), "bridge", resamples=10)
        assert [(r.metric, r.status, r.metric_version) for r in res.rows] == [("acc", "", version)]


def test_pairing_is_by_sample_id_on_shared_samples(toy: ToyStore) -> None:
    n = 100
    v = np.random.default_rng(4).random(n)
    b = toy.unit(name="bridge", step=10)
    m = toy.unit(name="ckpt", step=100)
    toy.scores(b, "toy_score", ids(n), value=v)
    # the model's file: another row order, 10 samples missing, one sample where the metric does not apply
    order = np.random.default_rng(5).permutation(n)[:90]
    mv = v[order] + 0.25
    mv[0] = np.nan
    toy.scores(m, "toy_score", [ids(n)[i] for i in order], value=mv)
    res = compare(Store(toy.root), "bridge@10", resamples=300)
    (row,) = res.rows
    assert row.n == 89
    assert row.delta == pytest.approx(0.25) and row.ci_low == pytest.approx(0.25)
    assert any("89 shared samples" in n for n in res.notes)


def test_lower_is_better_direction_and_policy(toy: ToyStore) -> None:
    # a perplexity-like metric that rises 1% on every row: a regression of 1%
    n = 50
    b = toy.unit(name="bridge", step=10, tier="tier2")
    m = toy.unit(name="ckpt", step=100, tier="tier2")
    base = np.full(n, 20.0)
    toy.scores(b, "toy_ppl", ids(n), value=base, hib=False)
    toy.scores(m, "toy_ppl", ids(n), value=base * 1.01, hib=False)
    strict = Policy(rules=[Rule(tier="tier2", max_rel_regression=0.005)])
    loose = Policy(rules=[Rule(tier="tier2", max_rel_regression=0.005), Rule(metric="toy_ppl", max_rel_regression=0.02)])
    (row,) = compare(Store(toy.root), "bridge", policy=strict, resamples=100).rows
    assert row.delta == pytest.approx(0.2) and row.status == "fail"
    assert "1.000% > 0.500%" in row.reason
    (row,) = compare(Store(toy.root), "bridge", policy=loose, resamples=100).rows
    assert row.status == "pass" and "metric=toy_ppl" in row.rule  # the metric rule is more specific


def test_no_material_regression_needs_enough_evidence(toy: ToyStore) -> None:
    # Same true difference (+0.01 on average, noisy), few vs many samples: the CI bound decides.
    rule = Rule(no_material_regression=0.02)
    for n, expect in ((20, "fail"), (20000, "pass")):
        r = np.random.default_rng(n)
        base = (r.random(n) < 0.5).astype(float)
        flip = r.random(n) < 0.3
        model = np.where(flip, 1 - base, base)
        model[: max(1, n // 100)] = 1.0
        root = toy.root.parent / f"s{n}"
        t = ToyStore(root)
        t.scores(t.unit(name="bridge", step=1), "toy_acc", ids(n), value=base)
        t.scores(t.unit(name="ckpt", step=2), "toy_acc", ids(n), value=model)
        (row,) = compare(Store(root), "bridge", policy=Policy(rules=[rule]), resamples=400).rows
        assert row.status == expect, (n, row)


def test_evaluate_checks() -> None:
    kw = {"base": 0.5, "ci_low": -0.03, "ci_high": 0.01, "p_value": 0.2, "higher_is_better": True}
    assert evaluate(Rule(max_regression=0.02), delta=-0.01, **kw)[0] == "pass"
    assert evaluate(Rule(max_regression=0.005), delta=-0.01, **kw)[0] == "fail"
    assert evaluate(Rule(no_material_regression=0.02), delta=-0.01, **kw)[0] == "fail"  # CI allows -0.03
    assert evaluate(Rule(no_material_regression=0.05), delta=-0.01, **kw)[0] == "pass"
    assert evaluate(Rule(no_material_rel_regression=0.05), delta=-0.01, **kw)[0] == "fail"  # 0.03/0.5 = 6%
    assert evaluate(Rule(no_significant_regression=True), delta=-0.01, **kw)[0] == "pass"  # p = 0.2
    assert evaluate(Rule(no_significant_regression=True), delta=-0.01, **{**kw, "p_value": 0.01})[0] == "fail"
    assert evaluate(Rule(skip=True), delta=-1.0, **kw)[0] == "skip"
    # lower is better: a rise is the regression, a fall is fine
    low = {**kw, "higher_is_better": False}
    assert evaluate(Rule(max_regression=0.0), delta=-0.2, **low)[0] == "pass"
    assert evaluate(Rule(max_regression=0.0), delta=0.2, **low)[0] == "fail"


def test_missing_task_fails_a_gated_row(toy: ToyStore) -> None:
    b = toy.unit(name="bridge", step=1)
    toy.scores(b, "toy_acc", ids(10), value=np.ones(10))
    b2 = toy.unit(name="bridge", step=1, task="other")
    toy.scores(b2, "toy_acc", ids(10), value=np.ones(10))
    m = toy.unit(name="ckpt", step=2)
    toy.scores(m, "toy_acc", ids(10), value=np.ones(10))
    pol = Policy(rules=[Rule(max_regression=0.0)])
    res = compare(Store(toy.root), "bridge", policy=pol, resamples=50)
    status = {r.task: r.status for r in res.rows}
    assert status == {"toy": "pass", "other": "missing-fail"}
    assert len(res.failed) == 1
    ignore = Policy(rules=[Rule(max_regression=0.0)], missing="ignore")
    assert not compare(Store(toy.root), "bridge", policy=ignore, resamples=50).failed


def test_baseline_names(toy: ToyStore) -> None:
    for name, step in (("bridge", 10), ("ckpt", 100), ("ckpt", 200)):
        toy.scores(toy.unit(name=name, step=step), "toy_acc", ids(4), value=np.ones(4))
    cat = build_catalog(Store(toy.root))
    assert cat.labels[resolve_baseline(cat, "bridge")] == "bridge@10"
    assert cat.labels[resolve_baseline(cat, "ckpt@200")] == "ckpt@200"
    assert cat.labels[resolve_baseline(cat, "100")] == "ckpt@100"
    assert cat.labels[resolve_baseline(cat, "/ckpt/ckpt/200")] == "ckpt@200"
    run = next(u.run_id for u in Store(toy.root).units() if u.manifest["model"]["step"] == 100)
    assert cat.labels[resolve_baseline(cat, run[:6])] == "ckpt@100"
    with pytest.raises(ConfigError, match="ambiguous.*ckpt@100, ckpt@200"):
        resolve_baseline(cat, "ckpt")
    with pytest.raises(ConfigError, match="did you mean bridge"):
        resolve_baseline(cat, "bridgee")


# -- the precision guard -----------------------------------------------------------------------------------
@pytest.mark.parametrize("field,kw", [("precision", {"precision": "int8"}), ("dtype", {"dtype": "bfloat16"}),
                                      ("tokenizer_hash", {"tokenizer": "tok2"}),
                                      ("chat_template_hash", {"template": "tpl2", "chat": True})])
def test_guard_refuses_mixed_runs(toy: ToyStore, field: str, kw: dict[str, Any]) -> None:
    chat = kw.get("chat", False)
    toy.scores(toy.unit(name="bridge", step=1, chat=chat), "toy_acc", ids(4), value=np.ones(4))
    other = toy.unit(name="ckpt", step=2, **kw)
    toy.scores(other, "toy_acc", ids(4), value=np.ones(4))
    with pytest.raises(MixedRunsError) as e:
        compare(Store(toy.root), "bridge", resamples=10)
    msg = str(e.value)
    assert field in msg and "ckpt@2" in msg and other[:12] in msg and "--allow-mixed" in msg
    res = compare(Store(toy.root), "bridge", resamples=10, allow_mixed=True)
    assert any(field in n for n in res.notes)


def test_chat_template_only_matters_for_chat_tasks(toy: ToyStore) -> None:
    toy.scores(toy.unit(name="bridge", step=1, template=None), "toy_acc", ids(4), value=np.ones(4))
    toy.scores(toy.unit(name="ckpt", step=2, template="tpl2"), "toy_acc", ids(4), value=np.ones(4))
    assert compare(Store(toy.root), "bridge", resamples=10).rows[0].status == ""


# -- the command line ---------------------------------------------------------------------------------------
def write_policy(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_cli_exit_code_gates_on_the_policy(toy: ToyStore, tmp_path: Path) -> None:
    shifted_store(toy, -0.02)  # an accuracy-like metric drops 0.02 on every row
    fails = write_policy(tmp_path / "fails.yaml", "policy:\n  rules:\n    - tier: tier3\n      max_regression: 0.01\n")
    passes = write_policy(tmp_path / "passes.yaml", "rules:\n  - tier: tier3\n    max_regression: 0.05\n")
    base = ["compare", "--store", str(toy.root), "--baseline", "bridge", "--resamples", "200"]
    r = invoke(*base, "--policy", str(fails))
    assert r.exit_code == 1, r.output
    assert "**FAIL**" in r.stdout and "policy FAILED: 1 of 1" in r.stdout
    r = invoke(*base, "--policy", str(passes))
    assert r.exit_code == 0, r.output
    assert "| toy | toy_score ↑ |" in r.stdout and "policy passed" in r.stdout
    r = invoke(*base)  # no policy: report only
    assert r.exit_code == 0


def test_cli_formats(toy: ToyStore, tmp_path: Path) -> None:
    shifted_store(toy, 0.1)
    base = ["compare", "--store", str(toy.root), "--baseline", "bridge@10", "--resamples", "100"]
    r = invoke(*base, "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["baseline"] == "bridge@10" and doc["resamples"] == 100 and doc["passed"] is None
    assert doc["rows"][0]["delta"] == pytest.approx(0.1)
    out = tmp_path / "c.csv"
    r = invoke(*base, "--format", "csv", "-o", str(out))
    assert r.exit_code == 0, r.output
    lines = out.read_text().splitlines()
    assert lines[0].startswith("model,step,stage,precision,baseline,task,tier,metric") and len(lines) == 2
    r = invoke(*base, "--format", "xml")
    assert r.exit_code == 2 and "markdown, csv or json" in r.output


def test_cli_user_errors_are_one_line(toy: ToyStore, tmp_path: Path) -> None:
    toy.scores(toy.unit(name="bridge", step=1), "toy_acc", ids(4), value=np.ones(4))
    toy.scores(toy.unit(name="ckpt", step=2, precision="int4"), "toy_acc", ids(4), value=np.ones(4))
    r = invoke("compare", "--store", str(toy.root), "--baseline", "bridge")
    assert r.exit_code == 1
    err = r.stderr.strip()
    assert err.count("\n") == 0 and "precision differs" in err and "--allow-mixed" in err
    r = invoke("compare", "--store", str(toy.root), "--baseline", "nope")
    assert r.exit_code == 2 and "no checkpoint matches baseline 'nope'" in r.stderr
    bad = write_policy(tmp_path / "bad.yaml", "rules:\n  - tier: tier3\n    max_regresion: 0.01\n")
    r = invoke("compare", "--store", str(toy.root), "--baseline", "bridge", "--policy", str(bad),
               "--allow-mixed")
    assert r.exit_code == 2 and "max_regresion" in r.stderr


def test_load_policy_forms(tmp_path: Path) -> None:
    p = load_policy(write_policy(tmp_path / "a.yaml", "policy:\n  missing: ignore\n  rules:\n    - metric: 'acc*'\n      skip: true\n"))
    assert p.missing == "ignore" and p.rule_for("tier3", "x", "acc_norm") is not None
    assert p.rule_for("tier3", "x", "brier_score") is None
    with pytest.raises(ConfigError, match="at least one check"):
        load_policy(write_policy(tmp_path / "b.yaml", "rules:\n  - tier: tier2\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_policy(tmp_path / "missing.yaml")


# -- checkpoint matrices: each stage against its bridge --------------------------------------------------------
MATRIX = """name: toy-matrix
backend: fake
precision: fp32
suites: [demo]
stages:
  - name: stage1
    path: fake/stage1/step_{step}
    steps: [100, 300]
  - name: stage2
    path: fake/stage2/step_{step}
    steps: [50]
    bridge: stage1
"""


def matrix_store(toy: ToyStore, drop: float, bridge: str = "full") -> None:
    """stage1 at steps 100 and 300 (the bridge), stage2 at step 50 whose hellaswag score drops by ``drop``.
    ``bridge``: "full", "partial" (the bridge has no hellaswag unit) or "none" (no bridge checkpoint at all)."""
    v = (np.arange(40) % 3 == 0).astype(float)
    steps = (100, 300) if bridge == "full" else (100,)
    for step in steps:
        toy.scores(toy.unit(name=f"stage1-step{step}", step=step, stage="stage1", task="hellaswag"), "toy_acc", ids(40),
                   value=v + (0.5 if step == 100 else 0.0))
    toy.scores(toy.unit(name="stage2-step50", step=50, stage="stage2", task="hellaswag"), "toy_acc", ids(40),
               value=v - drop)
    # a task outside the stage's suites: never compared
    toy.scores(toy.unit(name="stage2-step50", step=50, stage="stage2", task="not_in_demo"), "toy_acc", ids(4),
               value=np.zeros(4))
    if bridge != "none":
        toy.scores(toy.unit(name="stage1-step300", step=300, stage="stage1", task="not_in_demo"), "toy_acc", ids(4),
                   value=np.ones(4))


def test_matrix_compares_each_stage_with_its_bridge(toy: ToyStore, tmp_path: Path) -> None:
    matrix_store(toy, drop=0.1)
    mfile = tmp_path / "m.yaml"
    mfile.write_text("policy:\n  rules:\n    - metric: toy_acc\n      max_regression: 0.05\n" + MATRIX)
    r = invoke("compare", "--store", str(toy.root), "--matrix", str(mfile), "--format", "json",
               "--resamples", "100")
    assert r.exit_code == 1, r.output  # the matrix's own policy gates
    doc = json.loads(r.stdout)
    (row,) = doc["rows"]
    assert (row["model"], row["baseline"], row["task"]) == ("stage2-step50", "stage1-step300", "hellaswag")
    assert row["delta"] == pytest.approx(-0.1) and row["status"] == "fail"
    # an explicit --policy replaces the matrix's
    loose = write_policy(tmp_path / "loose.yaml", "rules:\n  - metric: toy_acc\n    max_regression: 0.2\n")
    r = invoke("compare", "--store", str(toy.root), "--matrix", str(mfile), "--policy", str(loose),
               "--resamples", "100")
    assert r.exit_code == 0, r.output
    assert "## stage2-step50 vs stage1-step300" in r.stdout


@pytest.mark.parametrize("bridge,says", [("none", "stage1-step300 is not in the store"),
                                         ("partial", "the baseline stage1-step300 has no hellaswag units")])
def test_matrix_with_a_missing_bridge_fails_the_gate(tmp_path: Path, bridge: str, says: str) -> None:
    toy = ToyStore(tmp_path / "store")
    matrix_store(toy, drop=0.0, bridge=bridge)
    mfile = tmp_path / "m.yaml"
    mfile.write_text(MATRIX)
    pol = write_policy(tmp_path / "p.yaml", "rules:\n  - metric: toy_acc\n    max_regression: 0.2\n")
    r = invoke("compare", "--store", str(toy.root), "--matrix", str(mfile), "--policy", str(pol))
    assert r.exit_code == 1, r.output
    assert says in r.stdout and "policy FAILED" in r.stdout
    r = invoke("compare", "--store", str(toy.root), "--matrix", str(mfile))
    assert r.exit_code == 0  # no policy: reported, not gated


def test_report_follows_the_matrix_stage_order_and_bridges(toy: ToyStore, tmp_path: Path) -> None:
    from rescore.report.html import build_report
    from rescore.score.engine import build_results, write_results

    matrix_store(toy, drop=0.1)
    store = Store(toy.root)
    write_results(store, build_results(store))
    mfile = tmp_path / "m.yaml"
    mfile.write_text(MATRIX)
    page = build_report(store, matrix=mfile, tasks=["hellaswag"])
    assert page.count("<svg") == 1
    svg = page[page.index("<svg"):page.index("</svg>")]
    # stage1 first although stage2's steps are smaller; stage2's panel has stage1's last checkpoint as its line
    assert svg.index(">stage1</text>") < svg.index(">stage2</text>")  # legend entries, named once
    assert "bridge (stage1-step300)" in svg
    # one line per run: both stage1 checkpoints are the series "stage1", named once in the legend
    assert svg.count(">stage1</text>") == 1 and "stage1-step100</text>" not in svg and "stage stage1" not in svg


def test_did_you_mean_never_repeats_a_name_nor_offers_the_input(toy: ToyStore) -> None:
    from rescore.errors import close_names
    from rescore.report.results import check_patterns

    assert close_names("answer_chars", ["answer_chars", "answer_char", "answer_char"]) == ["answer_char"]
    toy.scores(toy.unit(name="stage1-step100", step=None), "toy_acc", ids(4), value=np.ones(4))
    cat = build_catalog(Store(toy.root))
    with pytest.raises(ConfigError) as e:
        resolve_baseline(cat, "stage1-step10")
    assert str(e.value.hint).count("stage1-step100") == 2  # once as the suggestion, once in the listing
    assert "did you mean stage1-step100?" in str(e.value.hint)
    with pytest.raises(ConfigError) as e:  # a metric that exists but has no results: said so, not offered back
        check_patterns("metric", ["answer_chars"], {"acc"}, what="results", listing="metrics",
                       names=lambda: ["answer_chars", "acc"])
    assert "'answer_chars' is known but has nothing here" in str(e.value.hint)
    assert "did you mean 'answer_chars'" not in str(e.value.hint)


def test_matrix_without_a_bridge_says_to_add_one_or_pass_a_baseline(toy: ToyStore, tmp_path: Path) -> None:
    matrix_store(toy, drop=0.0)
    mfile = tmp_path / "m.yaml"
    mfile.write_text(MATRIX.replace("    bridge: stage1\n", ""))
    r = invoke("compare", "--store", str(toy.root), "--matrix", str(mfile))
    assert r.exit_code == 2
    text = " ".join(r.output.split())
    assert "names no bridge" in text and "add `bridge: STAGE` to a stage" in text and "--baseline CHECKPOINT" in text
    assert "rescore plan" not in text
