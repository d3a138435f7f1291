"""`rescore demo`: the README's first command, end to end on a tiny real model and the data the package ships."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def test_demo_generates_scores_and_reports(tmp_path):
    store = tmp_path / "demo-store"
    # from another directory: the demo's data and suite come from the package, not from the working directory
    out = subprocess.run([sys.executable, "-m", "rescore.cli", "demo", "--store", str(store), "--no-progress"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "demo results" in out.stdout
    import re

    # counts print as integers (the table is wide enough for one line per metric when not a terminal)
    assert re.search(r"wikitext2_packed +│ tokens +│ +\d+ +│", out.stdout), out.stdout
    results = pq.read_table(store / "results.parquet").to_pylist()
    tasks = {r["task"] for r in results}
    assert {"wikitext2_packed", "wikitext2_docs", "hellaswag", "arc_easy", "gsm8k_chat", "sft_native"} <= tasks
    metrics = {(r["task"], r["metric"]) for r in results}
    assert ("hellaswag", "acc_norm") in metrics and ("wikitext2_docs", "word_perplexity") in metrics
    assert ("gsm8k_chat", "exact_match_strict") in metrics
    gsm_seeds = {r["seed"] for r in results if r["task"] == "gsm8k_chat"}
    assert {"0", "1", "agg"} <= gsm_seeds
    manifests = [p for p in (store / "gen").glob("*/manifest.json")]
    assert len(manifests) == 7
    # a second run reuses everything
    again = subprocess.run([sys.executable, "-m", "rescore.cli", "demo", "--store", str(store), "--no-progress"],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert again.returncode == 0 and "7 already complete" in again.stdout


def test_shipped_demo_data_is_the_cut_of_the_full_files(shared_data):
    """rescore/data holds what scripts/make_demo_data.py cuts from ../shared/data: the demo's rows, byte for byte."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), "--check"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
