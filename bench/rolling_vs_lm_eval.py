"""Rolling loglikelihood (document perplexity): rescore's hf backend vs lm-evaluation-harness's HFLM.

WikiText-2 test documents (split on top-level ``= Title =`` lines, as lm-eval's document-level wikitext
does) from ../shared/data, a random-init Llama (hidden 256, 4 layers, context 512) with a BPE tokenizer
trained on the same file, CPU float32, the same batch size (windows per forward pass) for both.
HFLM is instantiated in-process on the same model object and scores the same documents with
``loglikelihood_rolling``. Prints throughput (tokens/s), the ratio and the word-perplexity difference.

    python bench/rolling_vs_lm_eval.py [--docs 20] [--batch-size 8] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import statistics
import tempfile
from pathlib import Path

from timing import interleaved  # bench/timing.py (this script's directory is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
WIKI = ROOT.parent / "shared" / "data" / "wikitext2" / "wiki.test.raw"


def documents(text: str) -> list[str]:
    """Split on top-level titles `` = Title = `` (not `` = = Section = = ``)."""
    parts = re.split(r"(?m)^(?= = [^=].* = \s*$)", text)
    return [p for p in (d.strip("\n") for d in parts) if p.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reps", type=int, default=2, help="timed passes over all documents; the best is kept")
    ap.add_argument("--slices", type=int, default=10, help="work slices the two alternate on")
    ap.add_argument("--model-dir", type=Path, default=None)
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from lm_eval.api.instance import Instance
    from lm_eval.models import huggingface as lm_hf
    from lm_eval.models.huggingface import HFLM

    _tqdm = lm_hf.tqdm
    lm_hf.tqdm = lambda *a, **k: _tqdm(*a, **{**k, "disable": True})  # its rolling path forces progress bars

    from rescore.config import ModelConfig
    from rescore.core import Request
    from rescore.gen.base import RunContext
    from rescore.gen.hf import HFBackend
    from rescore.gen.rows import lm_eval_n_words
    from rescore.gen.tiny import build_tiny_model

    tmp = tempfile.TemporaryDirectory()
    model_dir = build_tiny_model(args.model_dir or Path(tmp.name) / "m", hidden=256, layers=4, heads=4, vocab=4096)
    be = HFBackend(ModelConfig(name="bench", path=str(model_dir), batch_size=args.batch_size))
    docs = documents(WIKI.read_text(encoding="utf-8"))[: args.docs]
    reqs = [Request(sample_id=f"{i:04d}", task="wikitext", request_type="rolling", text=d) for i, d in enumerate(docs)]
    lm = HFLM(pretrained=be.model, tokenizer=be.tokenizer, batch_size=args.batch_size)
    n_tokens = sum(len(be.tok_encode(d)) for d in docs)
    n_words = sum(lm_eval_n_words(d) for d in docs)
    print(f"model: Llama hidden 256, 4 layers, vocab {be.model.config.vocab_size}, context {be.max_length}, CPU float32, "
          f"torch threads {torch.get_num_threads()}; {len(docs)} WikiText-2 documents, {n_tokens:,} tokens, "
          f"{n_words:,} words; batch size {args.batch_size}")

    def run_rescore(a: int, b: int) -> dict[str, dict]:
        ctx = RunContext(seed=0, batch_size=args.batch_size, max_batch_tokens=1 << 30)
        return {r["sample_id"]: r for batch in be.run(reqs[a:b], ctx) for r in batch}

    def run_lm_eval(a: int, b: int) -> list[float]:
        return lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(docs[a:b])],
                                        disable_tqdm=True)

    for _ in be.run(reqs[:1], RunContext(seed=0, batch_size=args.batch_size)):  # warm-up
        pass
    lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (docs[0],), 0)], disable_tqdm=True)
    out, wall, cpu, ratios = interleaved(run_rescore, run_lm_eval, len(reqs), min(args.slices, len(reqs)), args.reps)
    ours = {k: v for part in out["ours"] for k, v in part.items()}
    theirs = [x for part in out["theirs"] for x in part]
    a, b = min(wall["ours"]), min(wall["theirs"])
    t_ours, t_theirs = wall["ours"], wall["theirs"]
    ll_ours = sum(ours[r.sample_id]["sum_logprob"] for r in reqs)
    ll_theirs = sum(theirs)
    words_ours = sum(ours[r.sample_id]["n_words"] for r in reqs)
    ppl_ours = math.exp(-ll_ours / words_ours)
    ppl_theirs = math.exp(-ll_theirs / n_words)
    max_doc = max(abs(ours[r.sample_id]["sum_logprob"] - t) for r, t in zip(reqs, theirs, strict=True))
    print(f"rescore hf : {a:7.2f} s  {n_tokens / a:9,.0f} tokens/s  (passes: {', '.join(f'{t:.2f}' for t in t_ours)})")
    print(f"lm-eval hf : {b:7.2f} s  {n_tokens / b:9,.0f} tokens/s  (passes: {', '.join(f'{t:.2f}' for t in t_theirs)})")
    print(f"CPU time   : rescore {min(cpu['ours']):.2f} s, lm-eval {min(cpu['theirs']):.2f} s, "
          f"ratio {min(cpu['theirs']) / min(cpu['ours']):.2f}x")
    print(f"throughput ratio rescore / lm-eval: {b / a:.2f}x (best pass); median over {len(ratios)} alternating "
          f"slices {statistics.median(ratios):.2f}x  (target >= 1.0x)")
    print(f"word perplexity: rescore {ppl_ours:.6f} lm-eval {ppl_theirs:.6f} "
          f"relative difference {abs(ppl_ours - ppl_theirs) / ppl_theirs:.2e} (target <= 1e-4); "
          f"max per-document |loglikelihood diff| {max_doc:.2e}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
