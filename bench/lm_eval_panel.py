"""Wall time per task of the lm_eval family's panel: rescore (gen, then score) vs lm-eval's
``simple_evaluate`` (hf model), same tiny model, same batch size, same documents, in the same run.

The panel is the parity test's (tests/test_lm_eval_family.py: 16 lm-eval task configs, IFEval when
lm-eval's ifeval extra is installed, over local copies of the data in ../shared/data). Prints, per task, lm-eval's seconds, rescore's gen and score seconds and the
ratio lm-eval / rescore (>= 1.0: rescore is at least as fast). Target: >= 1.0x on every task.

The last line, ``mmlu_two@256``, is the panel's two-subject MMLU group 5-shot with both sides' model at
max_length 256 (``--mmlu-max-length``): every choice's input is left-truncated to the same last 256 tokens,
which lm-eval and rescore each run once per question. Target: >= 1.0x. Measured on 2 CPU cores (tiny
model, --limit 30, batch size 4): lm-eval 2.43 s, rescore 1.69 s gen + 0.24 s score, 1.26x.

    python bench/lm_eval_panel.py [--limit 20] [--batch-size 4] [--tasks arc_easy,gsm8k] [--mmlu-max-length 256]
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
    ap.add_argument("--mmlu-max-length", type=int, default=256, help="max_length of the mmlu_two@N case, 5-shot (0: skip it)")
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
    cases = [(name, t, None) for name, t in tasks.items()]
    if args.mmlu_max_length and (not args.tasks or "mmlu_two" in args.tasks.split(",")):
        cases.append(("mmlu_two", {**panel_mod.panel(d)["mmlu_two"], "num_fewshot": 5}, args.mmlu_max_length))
    print(f"{'task':42s} {'lm-eval s':>10s} {'gen s':>8s} {'score s':>8s} {'ratio':>7s}")
    for name, t, max_length in cases:
        kw: dict = {}
        if t.get("chat"):
            kw = {"apply_chat_template": True, "fewshot_as_multiturn": bool(t.get("multiturn")),
                  "num_fewshot": t.get("num_fewshot")}
        label, model_arg = name, str(model)
        if max_length:
            label = f"{name}@{max_length}"
            model_arg = str(d / f"models-{max_length}.yaml")
            Path(model_arg).write_text(f"models:\n  - {{name: tiny, path: {model}, max_length: {max_length}}}\n")
        t0 = time.perf_counter()
        if max_length:
            run_lm_eval_at(panel_mod, model, name, t, max_length)
        else:
            panel_mod.run_lm_eval(model, {name: t}, **kw)
        theirs = time.perf_counter() - t0
        store = d / f"store-{label}"
        suite = panel_mod.suite(d, {name: t})
        t0 = time.perf_counter()
        r = invoke("gen", str(suite), "--model", model_arg, "--store", str(store), "--no-progress",
                   "--precision", "fp32", "--device", "cpu", "--batch-size", str(args.batch_size))
        gen_s = time.perf_counter() - t0
        assert r.exit_code == 0, r.output
        t0 = time.perf_counter()
        r = invoke("score", "--store", str(store))
        score_s = time.perf_counter() - t0
        assert r.exit_code == 0, r.output
        print(f"{label:42s} {theirs:10.2f} {gen_s:8.2f} {score_s:8.2f} {theirs / (gen_s + score_s):7.2f}x", flush=True)


def run_lm_eval_at(panel_mod, model: Path, name: str, t: dict, max_length: int) -> None:
    """The parity test's lm-eval run of one panel entry, with the hf model's max_length set."""
    import lm_eval

    obj, tm = panel_mod.lm_eval_objects(name, t)
    lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32,max_length={max_length}",
                            tasks=[obj], batch_size=4, device="cpu", limit=panel_mod.LIMIT, log_samples=True,
                            task_manager=tm, fewshot_random_seed=1234, num_fewshot=t.get("num_fewshot"))


if __name__ == "__main__":
    main()
