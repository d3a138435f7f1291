"""Helpers shared by the tests: run the CLI as a user would, check that bad input changed nothing, and write
small suites over the shipped data."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def cli(*args: str, cwd: Path | str | None = None, env: dict[str, str] | None = None,
        timeout: float | None = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``rescore ARGS`` in a subprocess (what a user types), with text output captured."""
    full_env = None if env is None else {**os.environ, **env}
    return subprocess.run([sys.executable, "-m", "rescore.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout, **kw)


def invoke(*args: str, **kw: Any) -> Any:
    """``rescore ARGS`` in this process through typer's CliRunner (fast; no subprocess start-up)."""
    from typer.testing import CliRunner

    from rescore.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], **kw)


def tree_hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (symlinks recorded by their target, not followed), keyed by path."""
    out: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        paths = [root] if root.is_file() or root.is_symlink() else sorted(root.rglob("*")) if root.exists() else []
        for p in paths:
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_unchanged(before: dict[str, str], after: dict[str, str]) -> None:
    """Every file that existed before still exists with the same bytes (new files are allowed)."""
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"files changed or lost: {changed[:10]}"


def assert_one_line_error(proc: Any, code: int | None = None, *, contains: str | None = None) -> str:
    """A user error: non-zero exit (``code`` when given), no traceback, and a message on stderr whose first
    line says what went wrong. Returns stderr."""
    err = proc.stderr if isinstance(proc.stderr, str) else (proc.stderr or b"").decode()
    rc = proc.returncode if hasattr(proc, "returncode") else proc.exit_code
    assert rc != 0, f"expected a failure, got exit 0; stderr: {err[-1000:]}"
    if code is not None:
        assert rc == code, f"exit {rc}, expected {code}; stderr: {err[-1000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert err.strip(), "no message on stderr"
    if contains is not None:
        assert contains in err, err[-2000:]
    return err


# tasks over the shared data (../shared/data), for suites written with write_suite: {**ARC_EASY, "subset_size": 8}
ARC_EASY: dict[str, Any] = {"name": "arc_easy", "family": "multiple_choice",
                            "source": {"path": "arc_easy/arc_easy.jsonl", "split": "test"},
                            "params": {"prompt": "arc", "schema": "llm_foundry"}}
GSM8K_SAMPLED: dict[str, Any] = {"name": "gsm8k_sampled", "family": "gsm8k", "source": {"path": "gsm8k/test.jsonl"},
                                 "chat": True}
WIKI_PAGES: dict[str, Any] = {"name": "wiki", "family": "ppl_docs",
                              "source": {"path": "wikitext2/wiki.test.raw", "format": "txt"},
                              "params": {"documents": "wikitext_pages", "line_ending": "crlf_doubled",
                                         "detokenize": "wikitext"}}


def write_suite(path: Path, data_root: Path | str, tasks: list[dict[str, Any]], *, name: str = "suite",
                seeds: tuple[int, ...] = (0,)) -> Path:
    """A suite YAML of ``tasks`` (dicts as in the YAML) at ``path``."""
    import yaml

    path.write_text(yaml.safe_dump({"name": name, "data_root": str(data_root), "seeds": list(seeds),
                                    "tasks": tasks}, sort_keys=False))
    return path


def gen_lm_eval_tasks(tmp: Path, store: Path, model: Path, tasks: Any, include_path: Path, name: str = "new") -> Any:
    """``rescore gen`` of lm-eval tasks (family lm_eval, from ``include_path``) on a local model, fp32 on CPU."""
    import yaml

    suite = tmp / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "lmcmp", "tasks": [
        {"name": t, "family": "lm_eval", "params": {"task": t, "include_path": str(include_path)}} for t in tasks]}))
    return invoke("gen", str(suite), "--model", str(model), "--name", name, "--store", str(store), "--no-progress",
                  "--precision", "fp32", "--device", "cpu")
