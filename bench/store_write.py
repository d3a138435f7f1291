"""Store write throughput: fake-backend generation with the store vs the same rows without writing.

Prints rows/s for (a) generating only, (b) generating + appending to rows.jsonl with fsync per batch +
compacting to rows.parquet, (c) the store alone on pre-generated rows, and the overhead ratios; then the
same comparison with the fake backend throttled to 1,000 rows/s.

Targets: store alone >= 50,000 loglikelihood rows/s sustained; overhead <= 10% at 1,000 rows/s.

    python bench/store_write.py [--rows 200000] [--batch 1000] [--slow-rows 5000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from rescore.artifacts.store import Store, UnitWriter
from rescore.config import ModelConfig
from rescore.core import Request
from rescore.gen.base import RunContext
from rescore.gen.fake import FakeBackend


def requests(n: int) -> list[Request]:
    return [
        Request(sample_id=f"{i:08d}", task="bench", request_type="loglikelihood", gold=i % 4,
                contexts=("A man is sitting on a roof. He",) * 4,
                continuations=(" starts pulling up roofing.", " is ripping level tiles off.",
                               " is holding a rubik's cube.", " starts pulling up roofing on a roof."))
        for i in range(n)
    ]


def gen_only(reqs: list[Request], batch: int, rows_per_s: float = 0) -> float:
    b = FakeBackend(ModelConfig(name="bench", path="fake", backend="fake", options={"rows_per_s": rows_per_s}))
    t = time.perf_counter()
    for _ in b.run(reqs, RunContext(seed=0, batch_size=batch)):
        pass
    return time.perf_counter() - t


def gen_with_store(reqs: list[Request], batch: int, root: Path, rows_per_s: float = 0) -> float:
    b = FakeBackend(ModelConfig(name="bench", path="fake", backend="fake", options={"rows_per_s": rows_per_s}))
    t = time.perf_counter()
    with UnitWriter(Store(root), "b0", {"request_type": "loglikelihood", "task": {"name": "bench"}}) as w:
        for rows in b.run(reqs, RunContext(seed=0, batch_size=batch)):
            w.append(rows)
        w.finish([r.sample_id for r in reqs])
    return time.perf_counter() - t


def store_only(reqs: list[Request], batch: int, root: Path) -> tuple[float, float]:
    """Seconds spent appending (the sustained rate while a unit runs) and compacting (once per unit)."""
    b = FakeBackend(ModelConfig(name="bench", path="fake", backend="fake"))
    batches = list(b.run(reqs, RunContext(seed=0, batch_size=batch)))
    t = time.perf_counter()
    with UnitWriter(Store(root), "b1", {"request_type": "loglikelihood", "task": {"name": "bench"}}) as w:
        for rows in batches:
            w.append(rows)
        t_append = time.perf_counter() - t
        w.finish([r.sample_id for r in reqs])
    return t_append, time.perf_counter() - t - t_append


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--slow-rows", type=int, default=5000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rescore-bench-"))
    try:
        reqs = requests(args.rows)
        g = gen_only(reqs, args.batch)
        gs = gen_with_store(reqs, args.batch, tmp / "a")
        s_app, s_fin = store_only(reqs, args.batch, tmp / "b")
        n = args.rows
        print(f"loglikelihood rows: {n:,}, batch {args.batch}")
        print(f"  generate only          {n / g:12,.0f} rows/s")
        print(f"  generate + store       {n / gs:12,.0f} rows/s   (ratio to generate only: {g / gs:.3f})")
        ok = "PASS" if n / s_app >= 50_000 else "FAIL"
        print(f"  store append (sustained, fsync per batch) {n / s_app:10,.0f} rows/s   target >= 50,000: {ok}")
        print(f"  store compaction to rows.parquet          {s_fin:10.2f} s once per unit "
              f"({n / (s_app + s_fin):,.0f} rows/s including it)")
        sr = reqs[: args.slow_rows]
        g1 = gen_only(sr, 50, rows_per_s=1000)
        gs1 = gen_with_store(sr, 50, tmp / "c", rows_per_s=1000)
        over = gs1 / g1 - 1
        print(f"backend throttled to 1,000 rows/s, {len(sr):,} rows, batch 50")
        print(f"  generate only          {len(sr) / g1:12,.0f} rows/s")
        print(f"  generate + store       {len(sr) / gs1:12,.0f} rows/s   overhead {over * 100:+.2f}%  "
              f"target <= 10%: {'PASS' if over <= 0.10 else 'FAIL'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
