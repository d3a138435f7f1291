"""Extending rescore from outside the repository: the example plugin package (examples/plugin) adds a task
family, a backend, a checkpoint loader and a metric, each one decorated object plus an entry point. It is
installed with pip (offline, into a directory of its own on PYTHONPATH, so the shared test environment
keeps only the built-in components) and used through `rescore gen` and `rescore score`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support import assert_one_line_error, cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin"

SUITE = """\
name: plugin-demo
seeds: [0]
gen: {max_new_tokens: 8, n: 2}
tasks:
  - name: add
    family: arithmetic
    params: {n: 6}
  - name: add_by_name
    family: rescore_example_plugin.family:Arithmetic
    params: {n: 3, seed: 1}
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin built and installed by pip (no network, no dependencies fetched)."""
    work = tmp_path_factory.mktemp("plugin")
    src = shutil.copytree(EXAMPLE, work / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = work / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert any(site.glob("rescore_example_plugin-*.dist-info/entry_points.txt"))
    return site


def run(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return cli(*args, cwd=cwd, env={"PYTHONPATH": str(site)})


def results(store: Path) -> dict[tuple[str, str, str], float]:
    t = pq.read_table(store / "results.parquet").to_pylist()
    return {(r["task"], r["metric"], str(r["seed"])): r["value"] for r in t}


def test_plugin_family_backend_and_metric_through_gen_and_score(plugin_site: Path, tmp_path: Path) -> None:
    (tmp_path / "suite.yaml").write_text(SUITE)
    (tmp_path / "models.yaml").write_text("models:\n  - {name: calc, path: calc, backend: calculator, "
                                          "options: {wrong_every: 2}}\n")
    out = run(plugin_site, "gen", "suite.yaml", "--model", "models.yaml", "--store", "s", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    out = run(plugin_site, "score", "--store", "s", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    res = results(tmp_path / "s")
    # the plugin metric, computed by default, and built-in metrics on the plugin family's rows
    assert res[("add", "shows_work", "agg")] == 1.0 and res[("add_by_name", "shows_work", "agg")] == 1.0
    # wrong_every: 2 -> sample ids 0, 2 and 4 of the 6 get a wrong answer; of ids 0..2, ids 0 and 2
    assert res[("add", "exact_match_strict", "agg")] == pytest.approx(3 / 6)
    assert res[("add_by_name", "exact_match_strict", "agg")] == pytest.approx(1 / 3)
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "s" / "gen").glob("*/manifest.json")]
    assert {m["model"]["backend"] for m in manifests} == {"calculator"}


def test_plugin_options_and_names_are_checked_before_anything_runs(plugin_site: Path, tmp_path: Path) -> None:
    (tmp_path / "suite.yaml").write_text(SUITE)
    (tmp_path / "models.yaml").write_text("models:\n  - {name: calc, path: calc, backend: calculator, "
                                          "options: {wrong_evry: 2}}\n")
    out = run(plugin_site, "gen", "suite.yaml", "--model", "models.yaml", "--store", "s", cwd=tmp_path)
    err = assert_one_line_error(out, 2, contains="unknown option 'wrong_evry'")
    assert "calculator backend" in err and "valid: wrong_every" in err
    assert not (tmp_path / "s" / "gen").exists()
    out = run(plugin_site, "gen", "suite.yaml", "--model", "calc", "--backend", "calculatr", "--store", "s", cwd=tmp_path)
    assert_one_line_error(out, 2, contains="did you mean 'calculator'")
    (tmp_path / "bad.yaml").write_text(SUITE.replace("params: {n: 6}", "params: {n: 6, colour: 1}"))
    out = run(plugin_site, "validate", "bad.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "unknown param 'colour'" in out.stdout + out.stderr
    assert "valid: max_operand, n, seed" in out.stdout + out.stderr


@pytest.mark.slow  # three gen runs that each start torch and the hf backend
def test_plugin_loader_feeds_the_hf_backend(plugin_site: Path, tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "suite.yaml").write_text(textwrap.dedent("""\
        name: plugin-hf
        seeds: [0]
        gen: {max_new_tokens: 4}
        tasks:
          - {name: add, family: arithmetic, params: {n: 3}}
    """))
    args = ("gen", "suite.yaml", "--model", str(tiny_model), "--loader", "random_llama", "--store", "s",
            "--no-progress")
    out = run(plugin_site, *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (manifest,) = [json.loads(p.read_text()) for p in (tmp_path / "s" / "gen").glob("*/manifest.json")]
    model = manifest["model"]
    assert model["backend"] == "hf" and model["loader"] == "random_llama" and model["dtype"] == "float32"
    assert len(model["fingerprint"]) == 64
    out = run(plugin_site, *args[:-1], "-O", "tasks.0.params.n=4", cwd=tmp_path)  # another unit, same loader
    assert out.returncode == 0, out.stderr[-3000:]
    out = run(plugin_site, "gen", "suite.yaml", "--model", str(tiny_model), "--loader", "random_llama",
              "--store", "s2", "--precision", "bf16", cwd=tmp_path)
    assert_one_line_error(out, 1, contains="fp32 models only")
    assert not (tmp_path / "s2" / "gen").exists()


def test_registry_entry_points_module_attr_names_and_built_in_names(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json as json_module

    from rescore.errors import ConfigError
    from rescore.registry import Registry

    dist = tmp_path / "widgets_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: widgets-demo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[rescore.test_widgets]\ndumper = json:dumps\nbuiltin = json:loads\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    reg: Registry[object] = Registry("widget", group="rescore.test_widgets", coerce=lambda o: ("widget", o))
    assert not reg._entry_points_read  # nothing read until a name is missing
    assert reg.get("dumper") == ("widget", json_module.dumps)
    assert reg.names() == ["builtin", "dumper"]
    assert reg.get("json:JSONDecoder") == ("widget", json_module.JSONDecoder)  # module:attr, not registered
    assert "json:JSONDecoder" not in reg.names()
    with pytest.raises(ConfigError, match=r"cannot import widget 'json:nope'"):
        reg.get("json:nope")

    taken: Registry[object] = Registry("widget", group="rescore.test_widgets")
    taken.register_lazy("builtin", "rescore.core:canonical_json")
    with pytest.raises(ConfigError, match="takes the name of a built-in widget"):
        taken.get("dumper")
