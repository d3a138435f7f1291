"""The layering: the CPU side never imports torch, transformers or vllm (checked in a fresh interpreter), and
the import-linter contracts in pyproject.toml hold (gen never imports score; score and artifacts never import a
framework, gen, tasks or report; only the CLI imports commands; plan never imports report)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "vllm", "accelerate", "bitsandbytes", "datasets")

CHECK = """
import json, sys, importlib, pkgutil
for name in {modules!r}:
    mod = importlib.import_module(name)
    if hasattr(mod, "__path__"):
        for info in pkgutil.walk_packages(mod.__path__, name + "."):
            importlib.import_module(info.name)
{extra}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})))
"""


def heavy_modules_after(modules: list[str], extra: str = "") -> list[str]:
    code = CHECK.format(modules=modules, heavy=HEAVY, extra=extra)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", ["rescore.score", "rescore.artifacts", "rescore.report", "rescore.config"])
def test_cpu_side_imports_no_torch(package):
    assert heavy_modules_after([package]) == []


def test_cli_help_imports_no_torch():
    extra = (
        "from rescore.cli import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "for cmd in [c.name for c in __import__('typer').main.get_command(app).commands.values()]:\n"
        "    assert CliRunner().invoke(app, [cmd, '--help']).exit_code == 0, cmd\n"
    )
    assert heavy_modules_after(["rescore.cli"], extra) == []


def lint_imports() -> str:
    """The venv's ``lint-imports`` (the one next to this interpreter), else the one on PATH."""
    here = Path(sys.executable).parent / "lint-imports"
    found = str(here) if here.exists() else shutil.which("lint-imports")
    if found is None:
        pytest.fail('lint-imports not found: pip install -e ".[dev]"')
    return found


def test_import_contracts():
    out = subprocess.run([lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout, out.stdout


def test_commands_contract_covers_every_module():
    """Every top-level module and package but the CLI is a source of the "only the CLI imports commands" contract,
    so a new one is covered when it is added."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c["forbidden_modules"] == ["rescore.commands"])
    pkg = ROOT / "rescore"
    top = {p.stem for p in pkg.glob("*.py") if p.stem != "__init__"} | {p.parent.name for p in pkg.glob("*/__init__.py")}
    assert {f"rescore.{m}" for m in top - {"cli", "commands"}} == set(contract["source_modules"])


def test_no_module_is_over_500_lines() -> None:
    """A module that grows past 500 lines does several jobs: split it along its seams."""
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "rescore").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert long == {}, long
