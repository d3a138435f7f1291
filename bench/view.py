"""``rescore view`` at scale: one task of 10,000 multiple-choice samples x 10 checkpoints.

Prints the page's size and how long headless Chromium takes to show the samples table (unpack, parse, first
page of rows), next to the same browser opening an empty page in the same run, so the ratio holds on any
machine. Also the time a filter takes (the incorrect rows of one checkpoint) and a sample page.

    python bench/view.py [--samples 10000] [--checkpoints 10] [--reps 3]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--virtual-time-budget=60000", "--dump-dom"]


def synthetic(samples: int, checkpoints: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    words = "the a of to and in is it that on was for with as by at from this be or an are".split()

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    cats = [f"category {i}" for i in range(20)]
    ss = [{"id": f"{i:08d}", "cat": rng.choice(cats), "prompt": text(60), "msgs": None, "target": None,
           "gold": rng.randrange(4), "choices": [text(12) for _ in range(4)], "ctx": None} for i in range(samples)]
    values, detail = [], []
    for _ in range(checkpoints):
        det, acc = [], []
        for s in ss:
            ll = [round(-rng.uniform(5, 60), 4) for _ in range(4)]
            det.append({"ll": ll, "nc": [len(c) for c in s["choices"]], "gr": [False] * 4})
            acc.append(1.0 if max(range(4), key=ll.__getitem__) == s["gold"] else 0.0)
        values.append({"acc": acc, "acc_norm": acc})
        detail.append(det)
    task = {"name": "synthetic_mc", "type": "loglikelihood", "metrics": ["acc", "acc_norm"], "primary": "acc",
            "hib": {"acc": True, "acc_norm": True}, "samples": ss, "values": values, "detail": detail}
    return {"store": "synthetic", "checkpoints": [f"ckpt@{1000 * i}" for i in range(checkpoints)], "flips": [0, 1],
            "tasks": [task], "notes": []}


def browse(exe: str, url: str, profile: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", url], capture_output=True, text=True, timeout=600)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"chromium failed: {r.stderr[-500:]}")
    return dt, r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--checkpoints", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("needs chromium (Debian package chromium)")
    from rescore.report.view import render

    tmp = Path(tempfile.mkdtemp(prefix="rescore-bench-view-"))
    import json

    data = synthetic(args.samples, args.checkpoints)
    t0 = time.perf_counter()
    page = render(data)
    build_s = time.perf_counter() - t0
    raw = len(json.dumps(data, separators=(",", ":")).encode())
    path = tmp / "view.html"
    path.write_text(page, encoding="utf-8")
    empty = tmp / "empty.html"
    empty.write_text("<!doctype html><title>empty</title><p>empty</p>", encoding="utf-8")
    url = path.as_uri()
    rows: dict[str, list[float]] = {"empty page": [], "samples table": [], "filter (incorrect on one)": [],
                                    "sample page": []}
    for rep in range(args.reps):  # alternate, so load from other processes hits each alike
        rows["empty page"].append(browse(exe, empty.as_uri(), tmp / f"p{rep}a")[0])
        dt, dom = browse(exe, url + "#task=synthetic_mc", tmp / f"p{rep}b")
        shown = dom.count('<tr class="sample"') - page.count('<tr class="sample"')  # less the script's own text
        assert shown == 100, f"the table shows a page of 100 rows, not {shown}"
        rows["samples table"].append(dt)
        rows["filter (incorrect on one)"].append(browse(exe, url + "#task=synthetic_mc&ck=3&res=incorrect", tmp / f"p{rep}c")[0])
        rows["sample page"].append(browse(exe, url + "#task=synthetic_mc&sample=00004321", tmp / f"p{rep}d")[0])
    base = min(rows["empty page"])
    print(f"rescore view: {args.samples:,} samples x {args.checkpoints} checkpoints, one multiple-choice task")
    print(f"page size {path.stat().st_size / 1e6:.2f} MB (the samples' {raw / 1e6:.1f} MB of JSON, gzip-compressed), "
          f"written in {build_s:.2f} s")
    print(f"{'what':28s} {'best of ' + str(args.reps):>12s} {'over an empty page':>20s}")
    for what, ts in rows.items():
        print(f"{what:28s} {min(ts):11.2f}s {min(ts) - base:19.2f}s")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
