"""`rescore backfill --executor slurm` and `--emit-sbatch` against a real Slurm cluster.

Skipped unless `sbatch` is on PATH and `sinfo` shows a usable node. A single-node cluster on this machine:
`sudo bash tests/slurm_localhost.sh` (installs slurm-wlm + munge if missing and starts the daemons).
Jobs run with one CPU each on the default partition and must finish within a few minutes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support import ARC_EASY, GSM8K_SAMPLED, cli, write_suite

pytestmark = pytest.mark.slow

WAIT_S = 300
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}


def _no_slurm_reason() -> str | None:
    hint = "start a local cluster with `sudo bash tests/slurm_localhost.sh`"
    for tool in ("sbatch", "srun", "squeue", "sinfo"):
        if shutil.which(tool) is None:
            return f"{tool} not on PATH ({hint})"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return f"sinfo did not answer ({hint})"
    states = {s.strip().rstrip("*~#") for s in r.stdout.split()}
    if r.returncode != 0 or not states & {"idle", "mixed", "allocated", "completing"}:
        return f"no usable Slurm node (sinfo: {(r.stdout + r.stderr).strip()[:200]!r}; {hint})"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    reason = _no_slurm_reason()
    if reason:
        pytest.skip(reason)


def env() -> dict[str, str]:
    # the sbatch script calls `rescore`; submitit jobs use sys.executable
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def small_matrix(tmp: Path, shared: Path) -> Path:
    write_suite(tmp / "small.yaml", shared, [
        {**ARC_EASY, "subset_size": 10},
        {**GSM8K_SAMPLED, "subset_size": 4, "gen": {"temperature": 0.7, "n": 2, "max_new_tokens": 16}},
    ], name="small", seeds=(0, 1))
    p = tmp / "matrix.yaml"
    p.write_text(textwrap.dedent(f"""
        name: m
        backend: fake
        precision: fp32
        suites: [{tmp / 'small.yaml'}]
        slurm: {{cpus_per_task: 1, time: "00:10:00", max_parallel: 2}}
        stages:
          - name: s1
            path: fake/s1/step_{{step}}
            steps: [1, 2]
    """))
    return p


def plan(matrix: Path, store: Path) -> dict:
    out = cli("plan", str(matrix), "--store", str(store), "--json", env=env(), timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for(job_id: str) -> dict[str, str]:
    """Poll squeue until every task of the array is in a final state; returns task id -> state."""
    deadline = time.monotonic() + WAIT_S
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        r = subprocess.run(["squeue", "-h", "-j", job_id, "-t", "all", "-o", "%i %T"], capture_output=True, text=True)
        if r.returncode != 0:  # purged from the controller (MinJobAge passed): finished
            return states
        states = dict(line.split() for line in r.stdout.strip().splitlines())
        if states and set(states.values()) <= TERMINAL:
            return states
        time.sleep(2)
    subprocess.run(["scancel", job_id])
    pytest.fail(f"Slurm job {job_id} not finished after {WAIT_S}s: {states}")


def test_backfill_executor_slurm_runs_every_unit_as_array_tasks(slurm, tmp_path, shared_data):
    matrix = small_matrix(tmp_path, shared_data)
    store = tmp_path / "st"
    before = plan(matrix, store)
    assert len(before["units"]) == 6 and before["jobs"] == 2  # 2 checkpoints x (arc + gsm8k x 2 seeds)

    out = cli("backfill", str(matrix), "--executor", "slurm", "--store", str(store), env=env(), timeout=120)
    assert out.returncode == 0, out.stderr
    m = re.search(r"submitted 2 array task\(s\) \((\d+)_\d+", out.stdout)
    assert m, out.stdout
    states = wait_for(m.group(1))
    assert not states or set(states.values()) == {"COMPLETED"}, states

    after = plan(matrix, store)
    assert {u["state"] for u in after["units"]} == {"complete"} and after["would_run"] == []
    logs = store / "logs" / "slurm"
    task_dirs = sorted(d for d in logs.iterdir() if re.fullmatch(rf"{m.group(1)}_\d+", d.name))
    assert len(task_dirs) == 2, list(logs.iterdir())
    import submitit.core.utils as su

    for d in task_dirs:
        assert "Starting with JobEnvironment" in next(d.glob("*_log.out")).read_text()
        status, result = su.pickle_load(next(d.glob("*_result.pkl")))
        assert status == "success", result
        assert result["units"] == 3
    again = cli("backfill", str(matrix), "--executor", "slurm", "--store", str(store), env=env(), timeout=120)
    assert again.returncode == 0 and "nothing to run" in again.stdout


def test_emitted_sbatch_script_runs_under_sbatch(slurm, tmp_path, shared_data):
    matrix = small_matrix(tmp_path, shared_data)
    store = tmp_path / "st"
    script = tmp_path / "job.sbatch"
    out = cli("backfill", str(matrix), "--store", str(store), "--emit-sbatch", str(script), env=env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "#SBATCH --array=0-1%2" in script.read_text()
    r = subprocess.run(["sbatch", "--wait", "--parsable", str(script)], capture_output=True, text=True, env=env(),
                       cwd=tmp_path, timeout=WAIT_S)
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = r.stdout.strip().split(";")[0]
    assert {u["state"] for u in plan(matrix, store)["units"]} == {"complete"}
    for k in range(2):
        err = (store / "logs" / "slurm" / f"{job_id}_{k}.err").read_text()
        assert "done:" in err, err
        assert (store / "logs" / "slurm" / f"{job_id}_{k}.out").exists()
