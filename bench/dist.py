"""Cost of storing next-token distributions (a task's ``dist``): bytes per stored position and the generation
overhead, measured in the same run against the same generation without them.

WikiText-2 pages, rolling loglikelihood on the ``hf`` backend (a small Llama built on the fly, fp32). Each
repetition generates the unit into a fresh store as ``rescore gen`` does (forward passes, rows and side files
written per batch and fsynced, rows.parquet and the side files compacted at the end) without distributions,
then with ``dist: {positions: all, format: {topk: K}}``, back to back, so that load from other processes hits
both alike. The model is loaded once, outside the timings. Prints bytes per position of the file written and
the overhead on the unit's generation time: from the best time of each side, and the median over the
repetitions of each pair's ratio with its range (on a shared machine the range shows how far to trust it);
then the part spent computing (time inside the backend: forward passes and the top-k, nothing written) and the
process's CPU time. With ``--full`` the same for ``format: full``.

Targets (``topk: 64``): <= 300 bytes per position, <= 10% of generation time.

    python bench/dist.py [--docs 6] [--topk 64] [--reps 3] [--vocab 8192] [--hidden 256] [--layers 4]
                         [--device cpu|cuda] [--full] [--model-dir DIR] [--store-dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


class TimedBackend:
    """A loaded backend shared by every repetition; counts the time spent inside its ``run``."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.compute_s = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def close(self) -> None:  # the runner closes backends when it is done: this one is used again
        pass

    def run(self, requests: Any, ctx: Any) -> Iterator[Any]:
        it = iter(self.backend.run(requests, ctx))
        while True:
            t = time.perf_counter()
            rows = next(it, None)
            self.compute_s += time.perf_counter() - t
            if rows is None:
                return
            yield rows


def suite_yaml(path: Path, docs: int, dist: str | None) -> Path:
    path.write_text(textwrap.dedent(f"""
        name: bench_dist
        data_root: {DATA}
        seeds: [0]
        tasks:
          - name: wiki
            family: ppl_docs
            source: {{path: wikitext2/wiki.test.raw, format: txt}}
            subset_size: {docs}
            params: {{documents: wikitext_pages, line_ending: crlf_doubled, detokenize: wikitext}}
    """) + (f"    dist: {dist}\n" if dist else ""))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=6, help="WikiText-2 pages")
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--full", action="store_true", help="also measure format: full")
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--store-dir", type=Path, default=None, help="where the stores are written (a temporary "
                    "directory by default; the disk matters: the side files are fsynced)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    a = ap.parse_args()

    from rescore.artifacts.store import Store
    from rescore.config import ModelConfig
    from rescore.gen.base import make_backend
    from rescore.gen.runner import plan_units, run_units
    from rescore.gen.tiny import build_tiny_model
    from rescore.tasks.suites import load_suite

    tmp = Path(tempfile.mkdtemp(prefix="rescore-bench-dist-", dir=a.store_dir))
    model_dir = a.model_dir or build_tiny_model(tmp / "model", hidden=a.hidden, layers=a.layers,
                                                heads=max(1, a.hidden // 64), vocab=a.vocab,
                                                max_position=max(1024, a.max_length),
                                                text_path=DATA / "wikitext2" / "wiki.test.raw")
    model = ModelConfig(name="bench", path=str(model_dir), device=a.device, batch_size=a.batch_size,
                        max_length=a.max_length)
    backend = TimedBackend(make_backend(model))
    configs: dict[str, str | None] = {"none": None, f"topk: {a.topk}": f"{{positions: all, format: {{topk: {a.topk}}}}}"}
    if a.full:
        configs["full"] = "{positions: all, format: full, max_bytes_per_unit: 100000000000}"

    def run(name: str, dist: str | None, rep: int) -> tuple[float, float, float, dict[str, Any]]:
        """Seconds of the unit's generation, seconds inside the backend, CPU seconds of the process (all
        threads), the manifest's dist record."""
        root = tmp / f"store-{rep}-{name.replace(': ', '')}"
        suite = load_suite(suite_yaml(tmp / f"suite-{name.replace(': ', '')}.yaml", a.docs, dist))
        store = Store(root)
        plans = plan_units(store, suite, [model])
        backend.compute_s = 0.0
        t, cpu = time.perf_counter(), time.process_time()
        (res,) = run_units(store, plans, backend_factory=lambda cfg: backend)  # type: ignore[arg-type,return-value]
        took, cpu = time.perf_counter() - t, time.process_time() - cpu
        assert res.action == "generated", res.action
        info = dict(store.unit(plans[0].run_id).manifest.get("dist") or {})
        shutil.rmtree(root)
        return took, backend.compute_s, cpu, info

    run("none", None, -1)  # warm-up
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in configs}
    sizes: dict[str, dict[str, Any]] = {}
    for rep in range(a.reps):
        for name, dist in configs.items():
            took, compute, cpu, info = run(name, dist, rep)
            times[name].append((took, compute, cpu))
            sizes[name] = info
    base, base_compute, _ = min(times["none"])
    print(f"{a.docs} WikiText-2 pages, vocabulary {a.vocab}, hidden {a.hidden}, {a.layers} layers, {a.device}, "
          f"batch size {a.batch_size}, max length {a.max_length}; {a.reps} repetitions")
    print(f"generation without distributions: {base:.2f} s (computing {base_compute:.2f} s; best)")
    for name in configs:
        if name == "none":
            continue
        took, _, _ = min(times[name])
        n, size = int(sizes[name]["positions"]), int(sizes[name]["bytes"])
        # each repetition's pair ran back to back: the median of their ratios is steadier than the ratio of the
        # best times when the machine's speed drifts
        ratio = {k: sorted(w[k] / o[k] for w, o in zip(times[name], times["none"], strict=True)) for k in range(3)}
        wall = ratio[0]
        print(f"{name:>10}: {n:,} positions, {size / n:.1f} bytes per position, {took:.2f} s; overhead "
              f"{took / base - 1:+.1%} (best times), {median(wall) - 1:+.1%} (median of the pairs, from "
              f"{wall[0] - 1:+.1%} to {wall[-1] - 1:+.1%}); computing {median(ratio[1]) - 1:+.1%}, CPU time "
              f"{median(ratio[2]) - 1:+.1%}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
