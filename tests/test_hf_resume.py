"""On the tiny transformers model: kill -9 and resume equals an uninterrupted run, and
`rescore verify determinism --matrix` regenerates a sample of a matrix's units."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rescore.artifacts.store import Store


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rescore.cli", *args], capture_output=True, text=True, **kw)


def suite(tmp: Path, shared: Path) -> Path:
    p = tmp / "hf.yaml"
    p.write_text(textwrap.dedent(f"""
        name: hfresume
        data_root: {shared}
        seeds: [0]
        tasks:
          - name: arc_easy
            family: multiple_choice
            source: {{path: arc_easy/arc_easy.jsonl, split: test}}
            subset_size: 24
            params: {{prompt: arc, schema: llm_foundry}}
          - name: gsm8k_sampled
            family: gsm8k
            source: {{path: gsm8k/test.jsonl}}
            subset_size: 12
            chat: true
            gen: {{temperature: 0.8, top_p: 0.95, n: 2, max_new_tokens: 24}}
    """))
    return p


def written_lines(store: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in store.glob("gen/*/rows.jsonl"))


def flat(col) -> np.ndarray:
    arr = col.combine_chunks()
    while pa.types.is_list(arr.type):
        arr = arr.flatten()
    return arr.to_numpy(zero_copy_only=False).astype(np.float64)


def tables(store: Path) -> dict:
    units = Store(store).units()
    assert units and all(u.complete for u in units)
    return {u.run_id: pq.read_table(u.parquet_path) for u in units}


def test_kill_9_and_resume_on_the_tiny_model_gives_the_same_rows(tmp_path, tiny_model, shared_data):
    s = suite(tmp_path, shared_data)
    base = ["gen", str(s), "--model", str(tiny_model), "--name", "tiny", "--device", "cpu", "--no-progress"]
    ref = tmp_path / "ref"
    out = cli(*base, "--store", str(ref), "--batch-size", "8")
    assert out.returncode == 0, out.stderr[-2000:]
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rescore.cli", *base, "--store", str(killed), "--batch-size", "2"]
    kills = 0
    for _ in range(3):  # kill each run as soon as it has written a new batch, then resume
        before = written_lines(killed)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and written_lines(killed) <= before:
            time.sleep(0.02)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = tables(ref), tables(killed)
    assert a.keys() == b.keys()
    for k in a:
        ta, tb = a[k], b[k]
        assert ta.column_names == tb.column_names and ta.num_rows == tb.num_rows
        for col in ta.column_names:
            if "logprob" in col:
                # float32 sums over differently padded batches: equal to ~1e-6, not bit for bit
                assert np.allclose(flat(ta[col]), flat(tb[col]), atol=1e-5, rtol=0), (k, col)
            else:
                assert ta[col].equals(tb[col]), f"unit {k}: column {col} differs after kill -9 and resume"


def test_verify_determinism_on_a_matrix_sample(tmp_path, tiny_model, shared_data):
    s = suite(tmp_path, shared_data)
    ck = tmp_path / "ck" / "s1" / "step_1"
    ck.parent.mkdir(parents=True)
    ck.symlink_to(tiny_model, target_is_directory=True)
    matrix = tmp_path / "m.yaml"
    matrix.write_text(textwrap.dedent(f"""
        name: m
        backend: hf
        precision: fp32
        suites: [{s}]
        model: {{device: cpu}}
        stages:
          - {{name: s1, path: "{tmp_path}/ck/s1/step_{{step}}", steps: [1]}}
    """))
    store = tmp_path / "st"
    out = cli("backfill", str(matrix), "--store", str(store), "--no-progress")
    assert out.returncode == 0, out.stderr[-2000:]
    ver = cli("verify", "determinism", "--matrix", str(matrix), "--sample", "2", "--rows", "4", "--store", str(store),
              "--json")
    assert ver.returncode == 0, ver.stdout + ver.stderr[-2000:]
    reports = json.loads(ver.stdout)
    assert len(reports) == 2 and all(r["token_mismatches"] == 0 for r in reports)
    none = cli("verify", "determinism", "--store", str(store))
    assert none.returncode == 2 and "RUN_ID or --matrix" in none.stderr
