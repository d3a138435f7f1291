"""The CPU side never imports torch, transformers or vllm: checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
