"""Wall time per task of the lm_eval family's panel: rescore (gen, then score) vs lm-eval's
``simple_evaluate`` (hf model), same tiny model, same batch size, same documents, in the same run.

The panel is the parity test's (tests/test_lm_eval_family.py: 15 lm-eval task configs over local copies of
the data in ../shared/data). Prints, per task, lm-eval's seconds, rescore's gen and score seconds and the
ratio lm-eval / rescore (>= 1.0: rescore is at least as fast). Target: >= 1.0x on every task.

    python bench/lm_eval_panel.py [--limit 20] [--batch-size 4] [--tasks arc_easy,gsm8k]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--tasks", default=None, help="only these panel entries (comma separated)")
    args = ap.parse_args()
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    import test_lm_eval_family as panel_mod
    from support import invoke

    from rescore.gen.tiny import build_tiny_model

    panel_mod.LIMIT = args.limit
    d = Path(tempfile.mkdtemp(prefix="lm-eval-panel-"))
    model = build_tiny_model(d / "tiny")
    tasks = panel_mod.panel(d)
    if args.tasks:
        tasks = {k: v for k, v in tasks.items() if k in set(args.tasks.split(","))}
    print(f"{'task':42s} {'lm-eval s':>10s} {'gen s':>8s} {'score s':>8s} {'ratio':>7s}")
    for name, t in tasks.items():
        kw = {}
        if t.get("chat"):
            kw = {"apply_chat_template": True, "fewshot_as_multiturn": bool(t.get("multiturn")),
                  "num_fewshot": t.get("num_fewshot")}
        t0 = time.perf_counter()
        panel_mod.run_lm_eval(model, {name: t}, **kw)
        theirs = time.perf_counter() - t0
        store = d / f"store-{name}"
        suite = panel_mod.suite(d, {name: t})
        t0 = time.perf_counter()
        r = invoke("gen", str(suite), "--model", str(model), "--store", str(store), "--no-progress",
                   "--precision", "fp32", "--device", "cpu", "--batch-size", str(args.batch_size))
        gen_s = time.perf_counter() - t0
        assert r.exit_code == 0, r.output
        t0 = time.perf_counter()
        r = invoke("score", "--store", str(store))
        score_s = time.perf_counter() - t0
        assert r.exit_code == 0, r.output
        print(f"{name:42s} {theirs:10.2f} {gen_s:8.2f} {score_s:8.2f} {theirs / (gen_s + score_s):7.2f}x", flush=True)


if __name__ == "__main__":
    main()
