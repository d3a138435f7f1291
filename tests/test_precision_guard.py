"""results / compare / report refuse to put runs of different precision side by side unless told to."""

from __future__ import annotations

import pytest
from support import cli


@pytest.mark.slow  # a dozen CLI processes; test_report checks the report's and compare's refusal in-process
def test_mixed_precision_is_refused_everywhere_unless_allowed(tmp_path, shared_data):
    store = str(tmp_path / "st")
    for name, precision, step in (("ckpt", "fp32", "100"), ("ckpt", "bf16", "200")):
        out = cli("gen", "demo", "--model", "fake", "--name", name, "--precision", precision, "--step", step,
                  "--store", store, "-t", "arc_easy")
        assert out.returncode == 0, out.stderr
    assert cli("score", "--store", store).returncode == 0

    res = cli("results", "--store", store)
    assert res.returncode == 1
    assert "precision differs" in res.stderr and "--allow-mixed" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    ok = cli("results", "--store", store, "--allow-mixed", "--format", "csv")
    assert ok.returncode == 0 and "warning: runs differ" in ok.stderr
    assert ok.stdout.count("arc_easy") >= 2
    # one checkpoint alone is fine
    assert cli("results", "--store", store, "--model", "ckpt", "--format", "csv").returncode == 1
    single = cli("results", "--store", store, "--format", "json", "--metric", "acc")
    assert single.returncode == 1

    cmp = cli("compare", "--store", store, "--baseline", "ckpt@100")
    assert cmp.returncode == 1 and "precision" in cmp.stderr
    rep = cli("report", str(tmp_path / "r.html"), "--store", store)
    assert rep.returncode == 1 and "precision" in rep.stderr
    assert not (tmp_path / "r.html").exists()
    assert cli("report", str(tmp_path / "r.html"), "--store", store, "--allow-mixed").returncode == 0
