"""Checkpoint loading time: the ``nanotron`` loader vs ``from_pretrained`` (the ``hf`` loader) of the same weights.

Builds a random Llama (default hidden 1024, 8 layers: about 150M parameters with a 32k vocabulary), saves it
with ``save_pretrained`` and in Nanotron's layout (the writer of tests/test_loader_nanotron.py), then loads each
``--reps`` times, alternating, and prints the best times and their ratio (target: nanotron <= 1.5x).

    python bench/loaders.py [--hidden 1024] [--layers 8] [--vocab 32000] [--reps 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    import torch
    from test_loader_nanotron import write_nanotron
    from transformers import LlamaConfig, LlamaForCausalLM

    from rescore.config import ModelConfig
    from rescore.gen.loaders import loaders
    from rescore.gen.tiny import build_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="rescore-bench-loaders-"))
    tok = build_tiny_model(tmp / "tok")  # its tokenizer files
    conf = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                       num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                       num_key_value_heads=args.hidden // 128, max_position_embeddings=2048)
    torch.manual_seed(0)
    hf = tmp / "hf"
    LlamaForCausalLM(conf).save_pretrained(hf)
    for f in tok.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, hf / f.name)
    nt = write_nanotron(hf, tmp / "nanotron" / "stage1" / "1000", interleaved=True)
    params = sum(p.numel() for p in LlamaForCausalLM.from_pretrained(hf).parameters())

    def load(cfg: ModelConfig) -> float:
        ld = loaders.get(cfg.loader)
        t0 = time.perf_counter()
        loaded = ld(cfg, ld.options_model.model_validate(cfg.options))
        dt = time.perf_counter() - t0
        del loaded
        return dt

    times: dict[str, list[float]] = {"hf (from_pretrained)": [], "nanotron": []}
    for _ in range(args.reps):
        times["hf (from_pretrained)"].append(load(ModelConfig(name="hf", path=str(hf), device="cpu", precision="bf16")))
        times["nanotron"].append(load(ModelConfig(name="nt", path=str(nt), loader="nanotron", device="cpu", precision="bf16")))
    hf_s, nt_s = min(times["hf (from_pretrained)"]), min(times["nanotron"])
    print(f"checkpoint load, {params / 1e6:.0f}M parameters, bf16, CPU, best of {args.reps} "
          "(both include hashing the weight files for the fingerprint)")
    print(f"  hf (from_pretrained)  {hf_s:7.2f} s")
    print(f"  nanotron              {nt_s:7.2f} s   ratio {nt_s / hf_s:.2f}x (target <= 1.5x)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
