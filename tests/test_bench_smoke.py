"""The benchmarks under bench/ keep running (on tiny sizes; their ratios are only meaningful at full size)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_rescore_scale_runs_and_prints_both_ratios(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "rescore_scale.py"), "--store", str(tmp_path / "st"),
                        "--mc-rows", "2000", "--gen-rows", "800", "--repeats", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "ratio to bare read:" in r.stdout and "ratio to full rescore:" in r.stdout
    assert "results.parquet: " in r.stdout and "metrics in it: 24" in r.stdout
