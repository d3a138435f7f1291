"""A built wheel works on its own: installed into a fresh virtual environment, run from another directory,
it lists the shipped suites, validates the shipped configs and runs `rescore demo` on the data it carries.

The fresh environment has no system site-packages and is not the test environment; a ``.pth`` file adds the
test environment's site-packages as a plain path so that the dependencies (pyarrow, torch, ...) need no
download. Only site directories run their ``.pth`` files, so the editable install of this checkout (a
``.pth`` hook in the test environment) stays inactive there, and the package can only come from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_TASKS = {"wikitext2_packed", "wikitext2_docs", "hellaswag", "arc_easy", "gsm8k_chat", "sft_native"}


def _run(args: list[str | Path], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    assert out.returncode == 0, f"{args}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build the wheel from a copy of the sources, install it into a fresh venv; return its paths."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"  # a copy: the build writes build/ and *.egg-info, and others may build at once
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "rescore", src / "rescore", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = base / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", dist, src], cwd=base)
    (wheel,) = dist.glob("rescore-*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], cwd=base)
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=base).stdout.strip())
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (purelib / "_test_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    return {"python": python, "rescore": venv / "bin" / "rescore", "purelib": purelib, "cwd": elsewhere, "wheel": wheel}


def test_wheel_carries_the_files_the_package_reads(installed: dict[str, Path]) -> None:
    import zipfile

    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "rescore").rglob("*")
               if p.is_file() and p.suffix in (".yaml", ".jsonl", ".raw", ".bz2", ".md", "") and "__pycache__" not in p.parts}
    assert shipped - names == set()
    assert {"rescore/configs/suites/demo.yaml", "rescore/data/wikitext2/wiki.test.raw", "rescore/py.typed"} <= names


def test_installed_wheel_lists_suites_validates_and_runs_the_fake_demo(installed: dict[str, Path]) -> None:
    cwd, purelib = installed["cwd"], installed["purelib"]
    where = _run([installed["python"], "-c", "import rescore; print(rescore.__file__)"], cwd=cwd).stdout.strip()
    assert Path(where).is_relative_to(purelib), where  # the wheel, not this checkout
    suites = json.loads(_run([installed["rescore"], "suites", "--json"], cwd=cwd).stdout)
    assert {"demo", "gsm8k_chat", "stage1", "stage2", "stage3", "stage4"} <= {s["name"] for s in suites}
    assert all(Path(s["path"]).is_relative_to(purelib) for s in suites)
    n_configs = len(list((ROOT / "rescore" / "configs").rglob("*.yaml")))
    assert f"{n_configs} config file(s) valid" in _run([installed["rescore"], "validate"], cwd=cwd).stdout
    out = _run([installed["rescore"], "demo", "--backend", "fake", "--store", "demo-fake", "--no-progress"], cwd=cwd)
    assert "demo results" in out.stdout
    results = pq.read_table(cwd / "demo-fake" / "results.parquet").to_pylist()
    assert {r["task"] for r in results} == DEMO_TASKS


@pytest.mark.slow
def test_installed_wheel_runs_the_demo(installed: dict[str, Path]) -> None:
    """The real demo: the tiny Llama's tokenizer is trained on the WikiText-2 text the wheel carries."""
    cwd = installed["cwd"]
    out = _run([installed["rescore"], "demo", "--store", "demo", "--no-progress"], cwd=cwd)
    assert "demo results: tiny-llama (fp32)" in out.stdout
    results = pq.read_table(cwd / "demo" / "results.parquet").to_pylist()
    assert {r["task"] for r in results} == DEMO_TASKS
    assert ("hellaswag", "acc_norm") in {(r["task"], r["metric"]) for r in results}
    readme = (cwd / "demo" / "models" / "tiny-llama" / "README.md").read_text()
    assert "wiki.test.raw" in readme
