"""Scoring at scale: full rescore of every metric vs a bare pyarrow read of the same columns.

Builds (once; reused when --store already holds it) a store with 1,000,000 multiple-choice rows and
200,000 generation rows. Rows are made by the fake backend (``FakeBackend.run``) from synthetic requests
and written through the store writer (``UnitWriter``: JSONL append + Parquet compaction), i.e. the
runner's write path without the task/suite planning layer:

- multiple choice: 5 tasks x 2 models, 100,000 rows each, 4 choices, 20 categories (subjects);
- GSM8K-style generation: 2 models x 2 seeds x 25,000 prompts, 4 sampled candidates each;
- SFT-native generation: 2 models x 2 seeds x 25,000 prompts with checks, 1 candidate each.

Then measures (best of --repeats runs, 5 by default, page cache warm):

- bare read: ``pq.read_table(rows.parquet, columns=...)`` of exactly the columns the metrics need;
- full rescore: ``score_store(force=True)`` with every built-in metric, Parquet page checksums verified
  on every read, per-row score files and the results table included; every run starts from a fresh
  process's state (per-text caches emptied);
- one new metric: a metric registered like a plugin, computed across the store (``score_store`` with
  only that spec; only the missing pairs are computed), results table included.

Targets: full rescore <= 3x the bare read; one new metric <= 1/3 of the full rescore.

    python bench/rescore_scale.py [--store DIR] [--mc-rows 1000000] [--gen-rows 200000] [--jobs N]

``--jobs`` defaults to what ``rescore score`` does without it (one process per CPU, up to 8, for a store
this size); ``--jobs 1`` measures the single-process path (a compute thread and a read/write thread).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rescore.artifacts import store as store_mod
from rescore.artifacts.store import Store, UnitWriter
from rescore.config import ModelConfig
from rescore.core import GenParams, Request, content_hash
from rescore.gen.base import RunContext
from rescore.gen.fake import FakeBackend
from rescore.score.columns import clear_caches
from rescore.score.engine import needed_columns as engine_columns
from rescore.score.engine import score_store, select_metrics
from rescore.score.spec import Metric, register_metric

MARKER = "bench-store.json"
SUBJECTS = [f"subject_{i:02d}" for i in range(20)]
CHECKS = [
    ("format_following", {"bullets": {"count": 3}, "no_role_leak": True}),
    ("strict_json", {"json": {"required_keys": ["name", "age"], "kind": "object"}}),
    ("python_code", {"python_parses": True, "contains": ["def "]}),
    ("concise", {"max_words": 12, "max_sentences": 1}),
    ("chat_clean", {"no_role_leak": True, "min_words": 2}),
    ("instruction_priority", {"refusal": True, "one_line": True}),
]


def mc_requests(task: str, n: int) -> list[Request]:
    out = []
    for i in range(n):
        ctx = f"Question {i} about {SUBJECTS[i % 20]}: which option is right?\nAnswer:"
        out.append(Request(sample_id=f"{i:08d}", task=task, request_type="loglikelihood", gold=i % 4,
                           category=SUBJECTS[i % 20], contexts=(ctx,) * 4,
                           continuations=(f" option {i % 7}", " a much longer option text", " no", f" maybe {i}")))
    return out


def gsm_requests(n: int) -> list[Request]:
    return [Request(sample_id=f"{i:08d}", task="gsm", request_type="generate",
                    target=f"{i} + {i} = {2 * i}\n#### {2 * i:,}", meta={"answer": str(2 * i)},
                    prompt=f"Question: What is {i} + {i}?\nAnswer:") for i in range(n)]


def sft_requests(n: int) -> list[Request]:
    out = []
    for i in range(n):
        cat, checks = CHECKS[i % len(CHECKS)]
        out.append(Request(sample_id=f"{i:08d}", task="sft", request_type="generate", category=cat,
                           meta={"checks": checks}, chat=True, messages=({"role": "user", "content": f"Prompt {i}"},)))
    return out


def write_unit(store: Store, model: dict[str, Any], task: str, tier: str, reqs: list[Request], seed: int,
               gen: GenParams | None) -> None:
    rt = reqs[0].request_type
    resolved = {"model": model, "task": {"name": task}, "seed": seed, "gen": gen.to_dict() if gen else None,
                "data_fp": "bench"}
    run_id = content_hash(resolved, 20)
    manifest = {"request_type": rt, "model": {**model, "precision": "fp32"}, "suite": "bench",
                "task": {"name": task, "family": task, "tier": tier, "config": {"params": {}}}, "seed": seed,
                "gen": gen.to_dict() if gen else None, "data_fp": "bench", "resolved": resolved}
    backend = FakeBackend(ModelConfig(name=model["name"], path=model["path"], backend="fake",
                                      options={"p_correct": model["p_correct"]}))
    ctx = RunContext(seed=seed, params=gen or GenParams(), batch_size=2000)
    with UnitWriter(store, run_id, manifest) as w:
        for rows in backend.run(reqs, ctx):
            w.append(rows)
        w.finish([r.sample_id for r in reqs])


def build(root: Path, mc_rows: int, gen_rows: int) -> dict[str, Any]:
    marker = root / MARKER
    want = {"mc_rows": mc_rows, "gen_rows": gen_rows, "version": 1}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return {"built": False, "seconds": 0.0}
    if root.exists():
        shutil.rmtree(root)
    store = Store(root)
    t = time.perf_counter()
    models = [{"name": "ckpt-a", "path": "/ckpt/step_1000", "step": 1000, "p_correct": 0.4},
              {"name": "ckpt-b", "path": "/ckpt/step_2000", "step": 2000, "p_correct": 0.7}]
    per_mc = mc_rows // 10
    for t_i in range(5):
        reqs = mc_requests(f"mc{t_i}", per_mc)
        for m in models:
            write_unit(store, m, f"mc{t_i}", "tier3", reqs, 0, None)
            print(f"  built mc{t_i} / {m['name']}: {per_mc:,} rows ({time.perf_counter() - t:.0f}s)", flush=True)
    per_gen = gen_rows // 8
    # no top-k alternatives: scoring never reads them and the fake backend spends most of its time on them
    sampled = GenParams(temperature=0.7, n=4, max_new_tokens=256, logprobs_topk=0)
    sft_gen = GenParams(temperature=0.7, n=1, max_new_tokens=256, logprobs_topk=0)
    for m in models:
        for seed in (0, 1):
            write_unit(store, m, "gsm", "tier3", gsm_requests(per_gen), seed, sampled)
            write_unit(store, m, "sft", "tier4", sft_requests(per_gen), seed, sft_gen)
            print(f"  built gsm+sft / {m['name']} / seed {seed} ({time.perf_counter() - t:.0f}s)", flush=True)
    marker.write_text(json.dumps(want))
    return {"built": True, "seconds": time.perf_counter() - t}


def needed_columns(request_type: str, specs: list[Metric]) -> list[str]:
    return sorted(engine_columns(s for s in specs if s.request_type == request_type))  # what the scorer reads


def bare_read(store: Store, specs: list[Metric]) -> float:
    t = time.perf_counter()
    for u in store.units():
        names = set(pq.read_schema(u.parquet_path).names)
        cols = [c for c in needed_columns(u.request_type, specs) if c in names]
        pq.read_table(u.parquet_path, columns=cols)
    return time.perf_counter() - t


def margin(table):  # type: ignore[no-untyped-def]
    """A new metric: log-probability margin of the gold choice over the best other choice."""
    from rescore.score.columns import flat_list, row_ids

    lls, off, _ = flat_list(table["choice_sum_logprob"])
    gold = table["gold"].to_numpy(zero_copy_only=False).astype(np.float64)
    rid = row_ids(off)
    pos = np.arange(lls.size) - np.repeat(off[:-1], np.diff(off))
    is_gold = pos == gold[rid]
    g = np.full(len(gold), np.nan)
    g[rid[is_gold]] = lls[is_gold]
    other = np.where(is_gold, -np.inf, lls)
    best = np.maximum.reduceat(other, off[:-1]) if lls.size else np.array([])
    return g - best


def best_of(n: int, fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        gc.collect()
        times.append(fn())
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=None, help="store directory (kept; reused when it matches)")
    ap.add_argument("--mc-rows", type=int, default=1_000_000)
    ap.add_argument("--gen-rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=5, help="runs of each measurement; the best is reported")
    ap.add_argument("--jobs", type=int, default=None, help="processes for score_store (default: rescore's own choice)")
    args = ap.parse_args()
    tmp = None
    root = args.store
    if root is None:
        tmp = tempfile.mkdtemp(prefix="rescore-bench-")
        root = Path(tmp) / "store"
    try:
        print(f"store: {root}")
        info = build(root, args.mc_rows, args.gen_rows)
        if info["built"]:
            print(f"built the store with the fake backend + store writer in {info['seconds']:.1f}s")
        store = Store(root)
        units = store.units()
        n_mc = sum(u.manifest["rows_done"] for u in units if u.request_type == "loglikelihood")
        n_gen = sum(u.manifest["rows_done"] for u in units if u.request_type == "generate")
        size = sum(u.parquet_path.stat().st_size for u in units) / 1e6
        print(f"{len(units)} units: {n_mc:,} multiple-choice rows, {n_gen:,} generation rows, {size:.0f} MB of rows.parquet")
        specs = select_metrics()
        print(f"metrics: {len(specs)} ({', '.join(s.name for s in specs)})")

        bare_read(store, specs)  # warm the page cache
        t_read = best_of(args.repeats, lambda: bare_read(store, specs))

        def full() -> float:
            store_mod._verified.clear()  # as a fresh process: verify checksums again, no cached per-text work
            clear_caches()
            t = time.perf_counter()
            score_store(store, specs, force=True, jobs=args.jobs)
            return time.perf_counter() - t

        t_full = best_of(args.repeats, full)
        report = score_store(store, specs)  # nothing left to do: the incremental no-op
        t_noop = report.seconds

        new = register_metric(Metric("gold_margin", margin, ("choice_sum_logprob", "gold"), "loglikelihood", True,
                                     "mean", 1, "logprob margin of the gold choice over the best other choice"))

        def add_one() -> float:
            for u in store.units():
                (store.scores_dir / u.run_id / new.file_name).unlink(missing_ok=True)
            store_mod._verified.clear()
            clear_caches()
            t = time.perf_counter()
            rep = score_store(store, [new], jobs=args.jobs)
            assert len(rep.computed) == 10, rep.computed
            return time.perf_counter() - t

        t_new = best_of(args.repeats, add_one)

        # where a full rescore spends its time (serial, for reading the numbers above)
        def reads_only() -> float:
            from rescore.score.engine import load_unit

            t = time.perf_counter()
            for u in store.units():
                load_unit(u, [s for s in specs if s.request_type == u.request_type])
            return time.perf_counter() - t

        def compute_only() -> float:
            from rescore.score.engine import aggregate_rows, load_unit, subsets_of
            from rescore.score.spec import UnitInfo

            total = 0.0
            clear_caches()
            for u in store.units():
                todo = [s for s in specs if s.request_type == u.request_type and s.available() is None]
                table, _ = load_unit(u, todo)
                t = time.perf_counter()
                subsets = subsets_of(table)
                for s in todo:
                    aggregate_rows(s, s.compute(table, UnitInfo(u.run_id, u.manifest)), subsets)
                total += time.perf_counter() - t
                del table
            return total

        t_reads = best_of(args.repeats, reads_only)
        t_compute = best_of(args.repeats, compute_only)
        print()
        from rescore.score.engine import auto_jobs

        jobs = args.jobs if args.jobs is not None else f"auto ({auto_jobs([(u, specs) for u in units])})"
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; jobs={jobs}")
        print(f"  phases alone: the scorer's reads (page checksums verified) {t_reads:.3f} s, metric functions + "
              f"aggregates {t_compute:.3f} s (reads and score-file writes overlap them in a full rescore)")
        print(f"bare pyarrow read of the metrics' columns    {t_read:8.3f} s")
        print(f"full rescore, all {len(specs)} metrics                {t_full:8.3f} s   ratio to bare read: "
              f"{t_full / t_read:.2f}x   target <= 3x: {'PASS' if t_full <= 3 * t_read else 'FAIL'}")
        print(f"add one new metric (gold_margin)             {t_new:8.3f} s   ratio to full rescore: "
              f"{t_new / t_full:.3f}   target <= 0.333: {'PASS' if t_new <= t_full / 3 else 'FAIL'}")
        print(f"second `score` with nothing to do            {t_noop:8.3f} s")
        t = store.results_path
        print(f"results.parquet: {pq.read_metadata(t).num_rows:,} rows; "
              f"metrics in it: {len(pc.unique(pq.read_table(t, columns=['metric'])['metric']))}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
