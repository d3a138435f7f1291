"""Registry lookups, config validation (every problem at once) and overrides."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from rescore.config import ConfigProblems, apply_overrides
from rescore.errors import ConfigError, UnknownNameError
from rescore.registry import Registry


def test_registry_decorator_lazy_entries_and_did_you_mean():
    reg: Registry[object] = Registry("widget")

    @reg.register("alpha")
    def alpha() -> int:
        return 1

    reg.register_lazy("json_dumps", "json:dumps")
    assert reg.get("alpha") is alpha
    assert not reg.is_loaded("json_dumps")
    import json

    assert reg.get("json_dumps") is json.dumps
    assert reg.is_loaded("json_dumps")
    with pytest.raises(UnknownNameError, match=r"unknown widget 'alpah' \(did you mean 'alpha'\?"):
        reg.get("alpah")
    with pytest.raises(ConfigError, match="invalid widget"):
        reg.register("Bad Name", object())


def test_lazy_backends_are_not_imported_until_asked():
    code = "from rescore.gen.base import backends; import sys; print('rescore.gen.hf' in sys.modules, backends.names())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False ['fake', 'hf', 'vllm']"


def test_overrides_parse_yaml_values():
    data = {"seeds": [0], "gen": {"n": 1}, "tasks": [{"name": "a"}]}
    out = apply_overrides(data, ["seeds=[0, 1, 2]", "gen.temperature=0.7", "tasks.0.subset_size=10", "name=x"])
    assert out == {"seeds": [0, 1, 2], "gen": {"n": 1, "temperature": 0.7}, "tasks": [{"name": "a", "subset_size": 10}],
                   "name": "x"}
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["novalue"])


def test_validate_reports_every_problem_of_a_file_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""
        name: Bad Suite
        seeds: [0]
        colour: blue
        tasks:
          - name: t1
            family: multiple_choice
            subset_size: -3
            bogus: 1
          - name: t2
            family: no_such_family
    """))
    out = subprocess.run([sys.executable, "-m", "rescore.cli", "validate", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    text = out.stdout + out.stderr
    for needle in ("name", "colour", "subset_size", "bogus", "no_such_family"):
        assert needle in text, (needle, text)


def test_validate_all_shipped_configs_pass():
    out = subprocess.run([sys.executable, "-m", "rescore.cli", "validate"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_broken_yaml_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\n")
    out = subprocess.run([sys.executable, "-m", "rescore.cli", "gen", str(bad), "--model", "fake",
                          "--store", str(tmp_path / "s")], capture_output=True, text=True)
    assert out.returncode == 2
    assert "not valid YAML" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "s").exists()


def test_config_problems_lists_all():
    e = ConfigProblems("x.yaml", ["a: bad", "b: bad"])
    assert "2 problems" in e.render() and "a: bad" in e.render() and "b: bad" in e.render()
