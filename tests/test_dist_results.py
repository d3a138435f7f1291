"""The per-unit metrics of stored distributions (``dist_entropy``, ``dist_tail_mass``, ``dist_ece``) are scored
like every other metric: a row each in results.parquet and ``rescore results`` for a unit that stores
distributions, token-level over all its stored positions; nothing (and no message) for a unit that does not."""

from __future__ import annotations

import json

import pytest
from support import ARC_EASY, WIKI_PAGES, invoke, write_suite

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rescore.artifacts.store import Store  # noqa: E402
from rescore.artifacts.tensors import read_dist  # noqa: E402
from rescore.config import ModelConfig  # noqa: E402
from rescore.gen.runner import plan_units, run_units  # noqa: E402
from rescore.score.engine import read_results, score_store  # noqa: E402
from rescore.score.metrics_dist import unit_metrics  # noqa: E402
from rescore.tasks.suites import load_suite  # noqa: E402

DIST_METRICS = ("dist_entropy", "dist_tail_mass", "dist_ece")


@pytest.mark.slow  # generates on the tiny model
def test_dist_metrics_are_rows_of_the_results_table(tmp_path, tiny_model, shared_data):
    suite = write_suite(tmp_path / "s.yaml", shared_data, [
        {**ARC_EASY, "subset_size": 8, "dist": {"format": {"topk": 16}}},
        {**WIKI_PAGES, "subset_size": 2, "dist": {"positions": {"every": 5}, "format": "full"}},
        {**WIKI_PAGES, "name": "wiki_plain", "subset_size": 1},
    ], name="distsuite")
    st = Store(tmp_path / "st")
    m = ModelConfig(name="tiny", path=str(tiny_model), device="cpu", batch_size=4, max_length=64, step=0)
    run_units(st, plan_units(st, load_suite(str(suite)), [m]))
    report = score_store(st)
    assert not [s for s in report.skipped if "dist" in s], report.skipped  # a unit without dist: nothing to say

    t = read_results(st).to_pylist()
    got = {(r["task"], r["metric"]): r for r in t if r["seed"] == "0" and r["subset"] == "all"}
    units = {u.manifest["task"]["name"]: u for u in st.units()}
    for task in ("arc_easy", "wiki"):
        want = unit_metrics(read_dist(units[task]))
        for name in DIST_METRICS:
            assert got[(task, name)]["value"] == pytest.approx(want[name], rel=1e-9, abs=1e-12), (task, name)
        assert got[(task, "dist_ece")]["n"] == want["positions"]  # every stored position, not one per row
    assert not {k for k in got if k[0] == "wiki_plain" and k[1].startswith("dist_")}

    out = invoke("results", "--store", str(st.root), "-M", "dist_*", "-f", "json")
    assert out.exit_code == 0, out.output
    shown = {(r["task"], r["metric"]) for r in json.loads(out.stdout)}
    assert shown == {(t, m) for t in ("arc_easy", "wiki") for m in DIST_METRICS}
