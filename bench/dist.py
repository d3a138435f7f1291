"""Cost of storing next-token distributions (a task's ``dist``): bytes per stored position and the generation
overhead, measured in the same run against the same generation without them.

WikiText-2 documents, rolling loglikelihood on the ``hf`` backend (a small Llama built on the fly, CPU fp32).
Each repetition runs the documents without distributions, then with ``dist: {positions: all, format: {topk: K}}``
(side files written per batch and compacted, as ``rescore gen`` does), alternating so that load from other
processes hits both alike; the best time of each side is kept. Prints bytes per position of the file written
and the overhead ratio; with ``--full`` the same for ``format: full``.

Targets (``topk: 64``): <= 300 bytes per position, <= 10% of generation time.

    python bench/dist.py [--docs 8] [--topk 64] [--reps 3] [--vocab 8192] [--hidden 256] [--layers 4]
                         [--device cpu|cuda] [--full] [--model-dir DIR] [--text wiki.test.raw]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIKI = ROOT.parent / "shared" / "data" / "wikitext2" / "wiki.test.raw"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--chars", type=int, default=6000, help="characters per document")
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--full", action="store_true", help="also measure format: full")
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--text", type=Path, default=WIKI, help="the WikiText-2 test split")
    a = ap.parse_args()

    from rescore.artifacts.tensors import DistParts
    from rescore.config import DistConfig, ModelConfig
    from rescore.core import Request
    from rescore.gen.base import RunContext, make_backend
    from rescore.gen.tiny import build_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="rescore-bench-dist-"))
    model_dir = a.model_dir or build_tiny_model(tmp / "model", hidden=a.hidden, layers=a.layers,
                                                heads=max(1, a.hidden // 64), vocab=a.vocab,
                                                max_position=max(1024, a.max_length), text_path=a.text)
    text = a.text.read_text(encoding="utf-8")
    reqs = [Request(sample_id=f"d{i:03d}", task="bench", request_type="rolling",
                    text=text[i * a.chars : (i + 1) * a.chars]) for i in range(a.docs)]
    backend = make_backend(ModelConfig(name="bench", path=str(model_dir), device=a.device, batch_size=a.batch_size,
                                       max_length=a.max_length))

    def run(cfg: DistConfig | None, rep: int) -> tuple[float, int, int]:
        """Seconds, stored positions and bytes of the compacted file."""
        d = tmp / f"unit-{rep}-{cfg is not None and cfg.topk}"
        d.mkdir(parents=True, exist_ok=True)
        parts = DistParts(d, "bench") if cfg is not None else None
        ctx = RunContext(seed=0, batch_size=a.batch_size, dist=cfg)
        t = time.perf_counter()
        for rows in backend.run(reqs, ctx):
            if parts is not None:
                parts.write(rows)
        info = parts.compact(sorted(r.sample_id for r in reqs), cfg) if parts is not None else {}
        if parts is not None:
            parts.remove()
        return time.perf_counter() - t, int(info.get("positions", 0)), int(info.get("bytes", 0))

    configs = [DistConfig(positions="all", format={"topk": a.topk})]
    if a.full:
        configs.append(DistConfig(positions="all", format="full"))
    run(None, -1)  # warm-up
    best: dict[str, float] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for rep in range(a.reps):
        t0, _, _ = run(None, rep)
        best["none"] = min(best.get("none", t0), t0)
        for cfg in configs:
            name = f"topk: {cfg.topk}" if cfg.topk else "full"
            t, n, size = run(cfg, rep)
            best[name] = min(best.get(name, t), t)
            sizes[name] = (n, size)
    print(f"{a.docs} documents, vocabulary {a.vocab}, hidden {a.hidden}, {a.layers} layers, {a.device}, batch size "
          f"{a.batch_size}, max length {a.max_length}; best of {a.reps}")
    print(f"generation without distributions: {best['none']:.2f} s")
    for name, (n, size) in sizes.items():
        over = best[name] / best["none"] - 1
        print(f"{name:>10}: {n:,} positions, {size / n:.1f} bytes per position, {best[name]:.2f} s "
              f"(overhead {over:+.1%})")


if __name__ == "__main__":
    main()
