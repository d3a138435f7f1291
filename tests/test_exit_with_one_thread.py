"""A command that stops with an error right after reading sealed files exits with its own code, also when
Arrow runs one worker thread (OMP_NUM_THREADS=1). Arrow's worker may drop its last reference to the bytes
it decoded after the command returned; when those were a Python object, releasing it during interpreter
exit aborted the process ("terminate called without an active exception", exit -6) about one run in six."""

from __future__ import annotations

import pytest
from support import cli


@pytest.mark.slow
def test_errors_after_reading_results_exit_cleanly_with_one_arrow_thread(tmp_path):
    store = str(tmp_path / "st")
    assert cli("gen", "demo", "--model", "fake", "--store", store, "-t", "arc_easy", "--no-progress").returncode == 0
    assert cli("score", "--store", store).returncode == 0
    for _ in range(15):  # the abort was a race: each run had about a one-in-six chance to hit it
        out = cli("results", "--store", store, "--metric", "acc_nrom", env={"OMP_NUM_THREADS": "1"})
        assert out.returncode == 2, (out.returncode, out.stderr)
        assert "terminate called" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
