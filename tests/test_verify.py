"""`rescore verify`: store integrity and rescoring reproduction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support import cli


@pytest.fixture(scope="module")
def scored_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("verify") / "st"
    assert cli("gen", "demo", "--model", "fake", "--store", str(store), "-t", "arc_easy", "-t", "gsm8k_chat",
               "-t", "wikitext2_docs").returncode == 0
    out = cli("score", "--store", str(store))
    assert out.returncode == 0, out.stderr
    return store


@pytest.fixture
def scored_store(scored_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of one generated and scored store, for a test to change."""
    store = tmp_path / "st"
    shutil.copytree(scored_template, store, symlinks=True)
    return store


def test_clean_store_verifies(scored_store):
    out = cli("verify", "--store", str(scored_store))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 unit(s) checked: 0 problem(s)" in out.stdout


def test_corrupt_orphaned_and_leftover_files_are_listed(scored_store):
    units = sorted((scored_store / "gen").iterdir())
    pq = units[0] / "rows.parquet"
    pq.write_bytes(pq.read_bytes()[:-10])
    (scored_store / "gen" / "0123abcd").mkdir()  # a unit directory without a manifest
    (scored_store / "scores" / "feedbeef").mkdir(parents=True)  # scores of a unit that is gone
    (units[1] / ".rows.parquet.x.tmp").write_bytes(b"half")
    out = cli("verify", "--store", str(scored_store), "--json")
    assert out.returncode == 1
    found = {(f["kind"], Path(f["path"]).name) for f in json.loads(out.stdout)["findings"]}
    assert ("corrupt", "rows.parquet") in found
    assert ("orphaned", "0123abcd") in found and ("orphaned", "feedbeef") in found
    assert ("leftover", ".rows.parquet.x.tmp") in found


def test_rescoring_reproduces_an_earlier_results_file(scored_store, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in (scored_store / "scores").rglob("*.arrow")}
    assert before
    ok = cli("verify", "--store", str(scored_store), "--against", str(scored_store / "results.parquet"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 differ" in ok.stdout and "0 missing" in ok.stdout
    after = {p: p.stat().st_mtime_ns for p in (scored_store / "scores").rglob("*.arrow")}
    assert before == after, "verify must not touch the store's score cache"

    import pyarrow.parquet as pq

    rows = pq.read_table(scored_store / "results.parquet").to_pylist()
    target = next(r for r in rows if r["metric"] == "acc" and r["value"] is not None)
    target["value"] += 0.01
    old = tmp_path / "old.json"
    old.write_text(json.dumps(rows, default=str))
    bad = cli("verify", "--store", str(scored_store), "--against", str(old), "--json")
    assert bad.returncode == 1
    diffs = [d for d in json.loads(bad.stdout) if d["status"] == "diff"]
    assert len(diffs) == 1 and diffs[0]["key"][4] == "acc"
    loose = cli("verify", "--store", str(scored_store), "--against", str(old), "--tolerance", "0.1")
    assert loose.returncode == 0


def test_against_a_missing_or_broken_file_is_one_line(scored_store, tmp_path):
    out = cli("verify", "--store", str(scored_store), "--against", str(tmp_path / "nope.json"))
    assert out.returncode == 1 and "not found" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "bad.json").write_text("{not json")
    out = cli("verify", "--store", str(scored_store), "--against", str(tmp_path / "bad.json"))
    assert out.returncode == 1 and "cannot read" in out.stderr


def test_rescoring_reproduces_parameterised_metrics_too(scored_store):
    out = cli("score", "--store", str(scored_store), "--metric", "pass_at_k:k=2", "--metric", "maj_at_n:k=2")
    assert out.returncode == 0, out.stderr
    import pyarrow.parquet as pq

    metrics = set(pq.read_table(scored_store / "results.parquet", columns=["metric"]).column("metric").to_pylist())
    assert {"pass_at_2", "maj_at_2"} <= metrics
    ok = cli("verify", "--store", str(scored_store), "--against", str(scored_store / "results.parquet"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 differ" in ok.stdout and "0 missing" in ok.stdout
