"""Cut the demo's data slice (``rescore/data/``) from the full files in ``../shared/data``.

    python scripts/make_demo_data.py            # write rescore/data/<task>/... from ../shared/data
    python scripts/make_demo_data.py --check    # exit 1 when rescore/data differs from a fresh cut

The demo suite (``rescore/configs/suites/demo.yaml``) reads its files from the package, so ``rescore demo``
runs from an installed wheel. A slice keeps each file's format and relative path, so ``--data-root
../shared/data`` runs the same suite on the full files:

- multiple-choice and GSM8K files keep exactly the rows the demo suite's ``subset_size``/``subset_seed``
  draw from the full file (the same items as a run on the full file; their sample ids are their positions
  in the slice), copied byte for byte;
- WikiText-2 keeps its first pages (whole articles, byte for byte): the packed windows, the documents and
  the tiny model's tokenizer training text.
"""

from __future__ import annotations

import argparse
import bz2
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data"
OUT = ROOT / "rescore" / "data"
WIKITEXT_PAGES = 6  # about 100 KB of text
LICENSES = ["gsm8k/LICENSE"]  # copied beside the slice


def wikitext_head(raw: bytes, pages: int) -> bytes:
    """The first ``pages`` articles: everything before the next top-level `` = Title = `` line."""
    titles = [m.start() for m in re.finditer(rb"(?m)^ = [^=\r\n][^\r\n]* = \r?$", raw)]
    return raw if len(titles) <= pages else raw[: titles[pages]]


def jsonl_rows(raw: bytes) -> list[bytes]:
    return [line + b"\n" for line in raw.split(b"\n") if line.strip()]


def hellaswag_items(raw: bytes) -> list[bytes]:
    lines = bz2.decompress(raw).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [b"".join(line + b"\n" for line in lines[i : i + 6]) for i in range(0, len(lines), 6)]


def cut(source: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file of the slice."""
    from rescore.tasks.common import subset_indices
    from rescore.tasks.suites import load_suite

    out: dict[str, bytes] = {}
    for task in load_suite("demo").tasks:
        if task.source is None or task.source.path is None or task.source.path in out:
            continue
        rel = task.source.path
        raw = (source / rel).read_bytes()
        if task.family in ("ppl_packed", "ppl_docs"):
            out[rel] = wikitext_head(raw, WIKITEXT_PAGES)
            continue
        hellaswag = task.source.format == "bz2-hellaswag"
        records = hellaswag_items(raw) if hellaswag else jsonl_rows(raw)
        keep = subset_indices(len(records), task.subset_size, task.subset_seed)
        body = b"".join(records[i] for i in keep)
        out[rel] = bz2.compress(body, 9) if hellaswag else body
    for rel in LICENSES:
        out[rel] = (source / rel).read_bytes()
    return out


def check_same_rows(source: Path, out: Path) -> list[str]:
    """The demo's rows from the slice equal its rows from the full files (apart from their positions)."""
    from rescore.tasks.common import IDX
    from rescore.tasks.data import load_direct
    from rescore.tasks.suites import load_suite

    problems = []
    for task in load_suite("demo").tasks:
        if task.source is None or task.family in ("ppl_packed", "ppl_docs"):
            continue
        full = [{k: v for k, v in r.items() if k != IDX} for r in load_direct(task, source).rows]
        part = [{k: v for k, v in r.items() if k != IDX} for r in load_direct(task, out).rows]
        if full != part:
            problems.append(f"{task.name}: the slice does not hold the rows the full file gives")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=SOURCE, help="the full data (default: ../shared/data)")
    ap.add_argument("--out", type=Path, default=OUT, help="where the slice goes (default: rescore/data)")
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = ap.parse_args()
    files = cut(args.source)
    if args.check:
        stale = [rel for rel, data in files.items()
                 if not (args.out / rel).is_file() or (args.out / rel).read_bytes() != data]
        stale += check_same_rows(args.source, args.out)
        for s in stale:
            print(f"stale: {s} (run python scripts/make_demo_data.py)", file=sys.stderr)
        return 1 if stale else 0
    for rel, data in files.items():
        (args.out / rel).parent.mkdir(parents=True, exist_ok=True)
        (args.out / rel).write_bytes(data)
        print(f"wrote {args.out / rel} ({len(data):,} bytes)")
    problems = check_same_rows(args.source, args.out)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
