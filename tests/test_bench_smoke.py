"""The benchmarks under bench/ keep running (on tiny sizes; their ratios are only meaningful at full size)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rescore.artifacts.store import Store
from rescore.score.registry import load_builtin
from rescore.score.spec import metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # builds a store and scores it with every metric a few times
def test_rescore_scale_runs_and_prints_both_ratios(tmp_path: Path) -> None:
    store = tmp_path / "st"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "rescore_scale.py"), "--store", str(store),
                        "--mc-rows", "2000", "--gen-rows", "800", "--repeats", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "ratio to bare read:" in r.stdout and "ratio to full rescore:" in r.stdout
    # every metric the benchmark scored with (all built-in ones) that applies to the store's rows, and the one
    # it adds, reaches the results table, however many metrics there are
    listed = re.search(r"^metrics: (\d+) \((.*)\)$", r.stdout, re.M)
    assert listed, r.stdout[-2000:]
    names = listed.group(2).split(", ")
    load_builtin()
    assert len(names) == int(listed.group(1)) and set(names) >= {"acc", "acc_norm", "exact_match_strict", "maj_at_n"}
    kinds = {u.request_type for u in Store(store).units()}
    expected = {n for n in names if metrics.get(n).request_type in kinds and metrics.get(n).available() is None}
    expected.add("gold_margin")
    got = set(pc.unique(pq.read_table(store / "results.parquet", columns=["metric"])["metric"]).to_pylist())
    assert got == expected
    assert "results.parquet: " in r.stdout and f"metrics in it: {len(expected)}" in r.stdout
