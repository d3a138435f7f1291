"""Loglikelihood throughput: rescore's hf backend vs lm-evaluation-harness's ``hf`` model (HFLM), same run.

A random-init Llama (hidden 256, 4 layers, head_dim 64) with a BPE tokenizer trained on WikiText-2, the
first 500 HellaSwag validation items from ../shared/data (lm-eval's preprocessing; context = query,
continuation = " " + ending), CPU float32. HFLM is instantiated in-process on the same model object and
tokenizer and scores the same (context, continuation) pairs. Both use the same batch size (sequences per
forward pass: for lm-eval one per choice, for rescore one per item holding the context once and every
ending). Prints wall time, items/s, the ratio, the max per-choice logprob difference and acc agreement.

    python bench/loglikelihood_vs_lm_eval.py [--items 500] [--batch-size 8] [--threads N]
"""

from __future__ import annotations

import argparse
import bz2
import logging
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
from timing import interleaved  # bench/timing.py (this script's directory is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
HELLASWAG = ROOT.parent / "shared" / "data" / "hellaswag" / "hellaswag_val_full.txt.bz2"


def preprocess(text: str) -> str:  # lm_eval/tasks/hellaswag/utils.py
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(n: int) -> list[tuple[str, list[str], int]]:
    lines = bz2.decompress(HELLASWAG.read_bytes()).decode("utf-8").split("\n")
    items = []
    for i in range(0, min(len(lines) - 5, 6 * n), 6):
        ctx, label, endings = lines[i], int(lines[i + 1]), lines[i + 2 : i + 6]
        items.append((preprocess(ctx), [preprocess(e) for e in endings], label))
    return items[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--reps", type=int, default=2, help="timed passes over all items; the best is kept")
    ap.add_argument("--slices", type=int, default=10, help="work slices the two alternate on")
    ap.add_argument("--model-dir", type=Path, default=None, help="reuse/build the model here (default: temp dir)")
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
    from rescore.gen.tiny import build_tiny_model

    tmp = tempfile.TemporaryDirectory()
    model_dir = build_tiny_model(args.model_dir or Path(tmp.name) / "m", hidden=256, layers=4, heads=4, vocab=4096)
    be = HFBackend(ModelConfig(name="bench", path=str(model_dir), batch_size=args.batch_size))
    n_params = sum(p.numel() for p in be.model.parameters())
    items = load_hellaswag(args.items)
    reqs = [
        Request(sample_id=f"{i:05d}", task="hellaswag", request_type="loglikelihood", gold=gold,
                contexts=(ctx,) * len(ends), continuations=tuple(" " + e for e in ends))
        for i, (ctx, ends, gold) in enumerate(items)
    ]
    pairs = [(ctx, " " + e) for ctx, ends, _ in items for e in ends]
    lm = HFLM(pretrained=be.model, tokenizer=be.tokenizer, batch_size=args.batch_size)
    print(f"model: Llama hidden 256, 4 layers, vocab {be.model.config.vocab_size}, {n_params / 1e6:.1f}M params, "
          f"CPU float32, torch threads {torch.get_num_threads()}; {len(items)} HellaSwag items, {len(pairs)} choices; "
          f"batch size {args.batch_size}")

    def run_rescore(a: int, b: int) -> dict[str, dict]:
        ctx = RunContext(seed=0, batch_size=args.batch_size, max_batch_tokens=1 << 30)
        return {r["sample_id"]: r for batch in be.run(reqs[a:b], ctx) for r in batch}

    def run_lm_eval(a: int, b: int) -> list[tuple[float, bool]]:
        insts = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs[4 * a : 4 * b])]
        return lm.loglikelihood(insts, disable_tqdm=True)

    # warm-up (thread pools, allocator), then alternate the two slice by slice
    for _ in be.run(reqs[:16], RunContext(seed=0, batch_size=args.batch_size)):
        pass
    lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs[:64])], disable_tqdm=True)
    out, wall, cpu, ratios = interleaved(run_rescore, run_lm_eval, len(reqs), args.slices, args.reps)
    ours = {k: v for part in out["ours"] for k, v in part.items()}
    theirs = [x for part in out["theirs"] for x in part]
    a, b = min(wall["ours"]), min(wall["theirs"])
    t_ours, t_theirs = wall["ours"], wall["theirs"]

    ours_sums = np.array([s for r in reqs for s in ours[r.sample_id]["choice_sum_logprob"]])
    theirs_sums = np.array([s for s, _ in theirs])
    ours_greedy = [g for r in reqs for g in ours[r.sample_id]["choice_is_greedy"]]
    k = 4
    pred_ours = ours_sums.reshape(-1, k).argmax(1)
    pred_theirs = theirs_sums.reshape(-1, k).argmax(1)
    gold = np.array([g for _, _, g in items])
    lens = np.array([len(" " + e) for _, ends, _ in items for e in ends]).reshape(-1, k)
    norm_ours = (ours_sums.reshape(-1, k) / lens).argmax(1)
    norm_theirs = (theirs_sums.reshape(-1, k) / lens).argmax(1)
    tokens_fed = sum(len(t) for r in reqs for t in [ours[r.sample_id]["prompt_token_ids"] or []])
    per_choice_tokens = sum(len(lm.tok_encode(c)) + len(lm.tok_encode(c + x)) - len(lm.tok_encode(c)) - 1 for c, x in pairs)
    cont_tokens = sum(n for r in reqs for n in ours[r.sample_id]["choice_n_tokens"])
    shared_tokens = tokens_fed + cont_tokens - len(pairs)
    print(f"tokens through the model: lm-eval {per_choice_tokens:,} (context once per choice), "
          f"rescore {shared_tokens:,} (context once per item)")
    print(f"rescore hf : {a:7.2f} s  {len(items) / a:7.1f} items/s  (passes: {', '.join(f'{t:.2f}' for t in t_ours)})")
    print(f"lm-eval hf : {b:7.2f} s  {len(items) / b:7.1f} items/s  (passes: {', '.join(f'{t:.2f}' for t in t_theirs)})")
    print(f"CPU time   : rescore {min(cpu['ours']):.2f} s, lm-eval {min(cpu['theirs']):.2f} s, "
          f"ratio {min(cpu['theirs']) / min(cpu['ours']):.2f}x")
    print(f"throughput ratio rescore / lm-eval: {b / a:.2f}x (best pass); median over {len(ratios)} alternating "
          f"slices {float(np.median(ratios)):.2f}x  (target >= 2.0x)")
    print(f"max |per-choice logprob diff|: {np.abs(ours_sums - theirs_sums).max():.2e}; "
          f"greedy flags equal: {ours_greedy == [g for _, g in theirs]}")
    print(f"acc: rescore {np.mean(pred_ours == gold):.4f} lm-eval {np.mean(pred_theirs == gold):.4f} "
          f"(predictions agree on {np.mean(pred_ours == pred_theirs) * 100:.1f}% of items); "
          f"acc_norm: rescore {np.mean(norm_ours == gold):.4f} lm-eval {np.mean(norm_theirs == gold):.4f}")
    tmp.cleanup()
    sys.exit(0)


if __name__ == "__main__":
    main()
