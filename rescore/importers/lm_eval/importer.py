"""The whole lm-eval import: every run under a directory, checked before the first unit is written."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from rescore.artifacts.store import Store
from rescore.core import content_hash
from rescore.importers.common import (
    ImportFormatError,
    ImportResult,
    ImportUnit,
    data_fingerprint,
    fail,
    outputs_fingerprint,
    safe_name,
    source_file,
    write_unit,
)
from rescore.importers.lm_eval.mapping import (
    OUTPUT_TYPES,
    Checks,
    generate_rows,
    loglikelihood_rows,
    mc_rows,
    rolling_rows,
)
from rescore.importers.lm_eval.model_args import chat_applied, model_identity
from rescore.importers.lm_eval.runs import LmEvalRun, Options, find_runs
from rescore.importers.lm_eval.samples import read_samples


# -- the whole import ---------------------------------------------------------------------------------
def build_units(run: LmEvalRun, opts: Options) -> tuple[list[ImportUnit], list[str]]:
    res = run.results
    model = model_identity(res, opts)
    cfg_all = res.get("config") or {}
    seed = cfg_all.get("random_seed", 0)
    seed = int(seed) if isinstance(seed, int) else 0
    units, notes = [], []
    versions = {"lm_eval": str(res.get("lm_eval_version")), "transformers": str(res.get("transformers_version"))}
    for lm_task in run.no_samples:
        if _wanted(lm_task, opts):
            notes.append(f"{lm_task}: no samples file next to {run.results_path.name} (skipped)")
    for lm_task, spath in sorted(run.samples.items()):
        if not _wanted(lm_task, opts):
            continue
        cfg = res["configs"][lm_task]
        if not isinstance(cfg, dict):
            raise fail(run.results_path, None, f"configs.{lm_task}", "must be an object")
        otype = cfg.get("output_type")
        if otype not in OUTPUT_TYPES:
            notes.append(f"{lm_task}: output_type {otype!r} is not supported (skipped)")
            continue
        rt, family, tier = OUTPUT_TYPES[otype]
        task = safe_name(lm_task, "task name")
        samples = read_samples(spath)
        if not samples:
            raise ImportFormatError(f"{spath}: no samples in the file")
        expected = ((res.get("n-samples") or {}).get(lm_task) or {}).get("effective")
        if isinstance(expected, int) and expected != len(samples):
            raise ImportFormatError(
                f"{spath}: {len(samples)} docs, but {run.results_path.name} says lm-eval scored {expected}",
                hint="the samples file is incomplete or from another run")
        checks = Checks()
        gen = None
        if otype == "multiple_choice":
            rows = mc_rows(spath, samples, task, cfg, res, checks)
        elif otype == "loglikelihood":
            rows = loglikelihood_rows(spath, samples, task)
        elif otype == "loglikelihood_rolling":
            rows = rolling_rows(spath, samples, task)
        else:
            rows, gen = generate_rows(spath, samples, task, res, seed)
        if family == "generate" and any(r["meta"] and '"answer"' in r["meta"] for r in rows):
            family = "gsm8k"
        n_shot = (res.get("n-shot") or {}).get(lm_task, cfg.get("num_fewshot"))
        task_cfg = {"lm_eval_task": lm_task, "num_fewshot": n_shot, "chat": chat_applied(res),
                    "params": {"target_delimiter": cfg.get("target_delimiter", " ")}, "lm_eval": cfg}
        if opts.include_path is not None:  # where rescore score finds the task's YAML for its lm-eval.* metrics
            task_cfg["include_path"] = opts.include_path
        inputs = [(r["sample_id"], content_hash([s.doc, s.target, s.args], 16)) for r, s in zip(rows, samples, strict=True)]
        units.append(ImportUnit(
            kind="lm-eval", request_type=rt, model=model,
            task={"name": task, "family": family, "tier": tier, "config": task_cfg},
            suite=opts.suite, data_fp=data_fingerprint(inputs), seed=seed, gen=gen, rows=rows,
            outputs_fp=outputs_fingerprint(rows),
            sources=[source_file(run.results_path), source_file(spath)],
            info={"lm_eval_task": lm_task, "lm_eval_results": {k: v for k, v in (res.get("results") or {}).get(lm_task, {}).items()},
                  "checks": checks.as_dict(), "date": run.date},
            versions=versions,
        ))
        notes += [f"{lm_task}: {n}" for n in checks.notes()]
    return units, notes


def _wanted(task: str, opts: Options) -> bool:
    return not opts.tasks or any(fnmatch.fnmatchcase(task, g) for g in opts.tasks)


def import_lm_eval(store: Store, root: Path, opts: Options = Options(), command: str | None = None,  # noqa: B008
                   ) -> tuple[list[ImportResult], list[str]]:
    """Import every run under ``root``; returns one result per unit and notes (skipped tasks, checks).
    Everything is parsed and checked before the first unit is written."""
    runs = find_runs(root)
    planned: list[ImportUnit] = []
    notes: list[str] = []
    for run in runs:
        units, n = build_units(run, opts)
        planned += units
        notes += n
    if not planned:
        raise ImportFormatError(f"{root}: nothing to import" + (f" ({'; '.join(notes)})" if notes else ""),
                                hint="check --task and that the run was made with --log_samples")
    return [write_unit(store, u, command) for u in planned], notes
