"""kill -9 at random moments, then resume: the store ends up exactly as an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import support

from rescore.artifacts.store import Store


def write_suite(tmp: Path, shared: Path) -> Path:
    return support.write_suite(tmp / "crash.yaml", shared, [
        {**support.ARC_EASY, "subset_size": 1800},
        {**support.GSM8K_SAMPLED, "subset_size": 300, "gen": {"temperature": 0.7, "top_p": 0.9, "n": 3, "max_new_tokens": 64}},
    ], name="crash", seeds=(0, 1))


def gen_cmd(suite: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rescore.cli", "gen", str(suite), "--model", "fake", "--store", str(store),
            "--batch-size", "7", "--no-progress", *extra]


def unit_tables(store: Path) -> dict[str, object]:
    units = Store(store).units()
    assert units and all(u.complete for u in units)
    return {u.run_id: pq.read_table(u.parquet_path) for u in units}


def rows_written(store: Path) -> int:
    try:
        return sum(u.rows_done() for u in Store(store).units()) if store.exists() else 0
    except FileNotFoundError:  # a unit compacted (rows.jsonl removed) while it was being counted
        return 0


@pytest.mark.slow
def test_kill_9_at_20_random_moments_then_resume_equals_uninterrupted(tmp_path, shared_data):
    suite = write_suite(tmp_path, shared_data)
    ref = tmp_path / "ref"
    subprocess.run(gen_cmd(suite, ref), check=True, capture_output=True)
    expected = unit_tables(ref)

    store = tmp_path / "killed"
    rng = random.Random(20261123)
    for _ in range(20):  # random kill moments; how many land before the run ends does not matter
        before = rows_written(store)
        proc = subprocess.Popen(gen_cmd(suite, store, "--fake-rows-per-s", "200"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120  # start-up: wait for this run's first row, then a random delay
        while proc.poll() is None and time.monotonic() < deadline and rows_written(store) <= before:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = subprocess.run(gen_cmd(suite, store), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    got = unit_tables(store)
    assert got.keys() == expected.keys()
    for run_id, table in expected.items():
        other = got[run_id]
        assert other.num_rows == table.num_rows
        ids = other.column("sample_id").to_pylist()
        assert len(ids) == len(set(ids)), "duplicate rows after resume"
        assert other.equals(table), f"unit {run_id} differs from the uninterrupted run"
    for u in Store(store).units():
        assert not (u.path / ".lock").exists()
        assert not (u.path / "rows.jsonl").exists()


def test_injected_failure_then_resume(tmp_path, shared_data):
    suite = write_suite(tmp_path, shared_data)
    store = tmp_path / "s"
    first = subprocess.run(gen_cmd(suite, store, "--fake-fail-after", "100"), capture_output=True, text=True)
    assert first.returncode != 0
    partial = [u for u in Store(store).units() if not u.complete]
    assert len(partial) == 1 and 90 <= partial[0].rows_done() <= 100
    again = subprocess.run(gen_cmd(suite, store), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resumed" in again.stdout
    assert all(u.complete for u in Store(store).units())
    ref = tmp_path / "ref"
    subprocess.run(gen_cmd(suite, ref), check=True, capture_output=True)
    assert {k: v.equals(unit_tables(ref)[k]) for k, v in unit_tables(store).items()} == dict.fromkeys(unit_tables(ref), True)


@pytest.mark.parametrize("args,code,message", [
    (["gen", "nosuchsuite", "--model", "fake"], 2, "suite"),
    (["gen", "demo", "--model", "fake", "--backend", "fakee"], 2, "did you mean 'fake'"),
    (["gen", "demo", "--model", "fake", "--precision", "fp12"], 2, "precision"),
    (["show", "deadbeef"], 1, "no unit"),
    (["gen", "demo", "--model", "/nonexistent/model"], 1, "not a local directory"),
    (["gen", "demo", "--model", "fake", "-t", "nosuch"], 2, "has no task 'nosuch'"),
    (["score", "--metric", "acc_nrom"], 2, "did you mean 'acc_norm'"),
])
def test_cli_errors_are_one_line_with_exit_code(tmp_path, args, code, message):
    out = subprocess.run([sys.executable, "-m", "rescore.cli", *args, "--store", str(tmp_path / "st")],
                         capture_output=True, text=True)
    assert out.returncode == code, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
