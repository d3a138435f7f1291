"""Run planned groups of units (:mod:`rescore.plan.backfill`): in this process, as local worker processes,
as a Slurm job array (submitit), or as a plain sbatch script.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rescore.artifacts.store import Store
from rescore.errors import UserError
from rescore.gen.runner import UnitPlan, unit_state
from rescore.plan.backfill import PlannedUnit, plan_matrix, todo
from rescore.plan.matrix import SlurmConfig

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class IncompleteJobError(UserError):
    """A backfill job finished but some of its units are not complete."""


def set_offline_env() -> None:
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def run_local(store: Store, groups: list[list[PlannedUnit]], *, progress: Any = None) -> list[Any]:
    """Run the groups in this process and fail loudly if any unit is still incomplete afterwards."""
    from rescore.gen.runner import run_units

    plans = [u.plan for g in groups for u in g]
    results = run_units(store, plans, progress=progress) if plans else []
    assert_complete(store, plans)
    return results


def assert_complete(store: Store, plans: Sequence[UnitPlan]) -> None:
    bad = [p for p in plans if unit_state(store, p.run_id)[0] != "complete"]
    if bad:
        raise IncompleteJobError(
            f"{len(bad)} unit(s) incomplete after the job: " + ", ".join(f"{p.run_id[:12]} ({p.label})" for p in bad[:5]),
            hint="see the job log; run the same backfill again to resume them",
        )


def run_workers(matrix_path: Path, store: Path, n: int, extra: Sequence[str] = ()) -> int:
    """Run ``n`` local worker processes, each ``backfill --shard k/n``; returns the worst exit code."""
    from rescore.children import spawn, wait_all

    # the workers die with this process (even a kill -9 of it), and SIGTERM or Ctrl-C here is passed on to them
    procs = spawn([[sys.executable, "-m", "rescore.cli", "backfill", str(matrix_path), "--store", str(store),
                    "--executor", "local", "--shard", f"{k}/{n}", "--no-progress", *extra] for k in range(n)])
    codes = wait_all(procs)
    bad = [c for c in codes if c != 0]  # a worker killed by a signal has a negative code
    return (bad[0] if bad[0] > 0 else 128 - bad[0]) if bad else 0


# -- Slurm ---------------------------------------------------------------------------------------------------

def slurm_job(store_root: str, matrix_path: str, run_ids: list[str], data_root: str | None,
              allow_direct: bool = False) -> dict[str, Any]:
    """Entry point of one Slurm array task (pickled by submitit): run these units of the matrix, printing
    a line as each unit starts and ends and the generation summary, like the sbatch script's tasks.

    It plans the matrix again with the submitter's ``--direct``: without it, a task whose data was planned
    from its source (not a prepared copy) would fail here with MissingDataError."""
    set_offline_env()
    from rescore.plan.matrix import load_matrix

    store = Store(store_root)
    m = load_matrix(matrix_path)
    units = plan_matrix(store, m, source=matrix_path, data_root=Path(data_root) if data_root else None,
                        allow_direct=allow_direct, check_paths=False)
    wanted = set(run_ids)
    mine = [[u for u in units if u.plan.run_id in wanted]]
    missing = wanted - {u.plan.run_id for u in mine[0]}
    if missing:
        raise IncompleteJobError(f"the matrix no longer plans units {sorted(missing)[:5]}",
                                 hint="the matrix or suite changed after submission; plan again")
    # the lines of the sbatch script's `rescore backfill --no-progress`, on stdout (submitit's *_log.out)
    from rescore.gen.progress import LineProgress, log_console, summarize

    results = run_local(store, todo(mine), progress=LineProgress(sys.stdout))
    summarize(results, log_console(sys.stdout))
    return {"units": len(run_ids), "host": os.uname().nodename}


def submit_slurm(store: Store, matrix_path: Path, groups: list[list[PlannedUnit]], cfg: SlurmConfig,
                 data_root: Path | None, allow_direct: bool = False) -> list[Any]:
    """Submit one array task per group. The job runs this interpreter (``sys.executable``) in the current
    working directory with the submitter's environment (sbatch's default ``--export=ALL``), so both must be
    visible on the compute nodes (a shared filesystem)."""
    try:
        import submitit
    except ImportError:
        raise UserError("the slurm executor needs submitit", hint='pip install -e ".[slurm]"') from None
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if missing:  # submitit would raise a bare RuntimeError
        raise UserError(f"no Slurm here: {' and '.join(missing)} not on PATH",
                        hint="run on a Slurm login node, or use --executor local, or --emit-sbatch FILE")
    log_dir = store.root / "logs" / "slurm"
    log_dir.mkdir(parents=True, exist_ok=True)
    ex = submitit.AutoExecutor(folder=str(log_dir / "%j"), cluster="slurm")
    params: dict[str, Any] = {
        "slurm_cpus_per_task": cfg.cpus_per_task, "timeout_min": _minutes(cfg.time),
        "slurm_array_parallelism": cfg.max_parallel, "slurm_job_name": "rescore-backfill",
        "slurm_setup": list(cfg.setup) + [f"export {k}={v}" for k, v in OFFLINE_ENV.items()],
    }
    extra: dict[str, Any] = {}
    if cfg.partition:
        params["slurm_partition"] = cfg.partition
    if cfg.gres:
        params["slurm_gres"] = cfg.gres
    if cfg.mem_gb:
        params["slurm_mem"] = f"{cfg.mem_gb}G"
    if cfg.account:
        params["slurm_account"] = cfg.account
    if cfg.qos:
        params["slurm_qos"] = cfg.qos
    for opt in cfg.extra:
        k, _, v = opt.lstrip("-").partition("=")
        extra[k.replace("-", "_")] = v or None
    if extra:
        params["slurm_additional_parameters"] = extra
    ex.update_parameters(**params)
    n = len(groups)
    try:
        return ex.map_array(slurm_job, [str(store.root.resolve())] * n, [str(matrix_path.resolve())] * n,
                            [[u.plan.run_id for u in g] for g in groups],
                            [str(data_root.resolve()) if data_root else None] * n, [allow_direct] * n)
    except submitit.core.utils.FailedJobError as e:  # sbatch refused the array (partition, account, limits)
        msg = " ".join(str(e).split())
        raise UserError(f"sbatch refused the job array: {msg}",
                        hint=f"fix the slurm settings (matrix 'slurm:' or flags); script in {log_dir}") from None


def _minutes(hms: str) -> int:
    parts = [int(x) for x in hms.replace("-", ":").split(":")]
    if len(parts) == 4:  # D-HH:MM:SS
        d, h, m, s = parts
        return d * 1440 + h * 60 + m + (1 if s else 0)
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts
    return h * 60 + m + (1 if s else 0)


def sbatch_script(store: Path, matrix_path: Path, n_groups: int, cfg: SlurmConfig, data_root: Path | None,
                  allow_direct: bool = False) -> str:
    """A plain sbatch array script: task k runs ``rescore backfill --shard k/N`` on this matrix.

    Slurm opens ``--output``/``--error`` before the script runs, so the log directory must exist when the
    job starts (a missing one makes every task fail with no log at all): the caller creates it, and the
    script says so for anyone who submits it again after deleting the store."""
    log_dir = (store / "logs" / "slurm").resolve()
    lines = ["#!/bin/bash", "#SBATCH --job-name=rescore-backfill",
             f"#SBATCH --array=0-{n_groups - 1}%{cfg.max_parallel}",
             f"#SBATCH --cpus-per-task={cfg.cpus_per_task}", f"#SBATCH --time={cfg.time}",
             f"#SBATCH --output={log_dir}/%A_%a.out", f"#SBATCH --error={log_dir}/%A_%a.err"]
    for flag, val in (("partition", cfg.partition), ("gres", cfg.gres), ("account", cfg.account), ("qos", cfg.qos),
                      ("mem", f"{cfg.mem_gb}G" if cfg.mem_gb else None)):
        if val:
            lines.append(f"#SBATCH --{flag}={val}")
    lines += [f"#SBATCH {opt}" for opt in cfg.extra]
    lines += [f"# {log_dir} must exist before submitting (Slurm opens the log files first)", "set -euo pipefail"]
    lines += [f"export {k}={v}" for k, v in OFFLINE_ENV.items()]
    lines += list(cfg.setup)
    cmd = ["rescore", "backfill", str(matrix_path.resolve()), "--store", str(store.resolve()), "--executor", "local",
           "--no-progress"]
    if data_root:
        cmd += ["--data-root", str(data_root.resolve())]
    if allow_direct:
        cmd.append("--direct")
    lines.append(" ".join(shlex.quote(c) for c in cmd) + f' --shard "${{SLURM_ARRAY_TASK_ID}}/{n_groups}"')
    return "\n".join(lines) + "\n"
