"""Bad input, handed in as a user would: integers beyond 64 bits, files that are not UTF-8 or nest too deeply,
unknown format placeholders, damaged manifests, empty data, seed lists that run nothing, plugins that measure
nothing or call sys.exit(), reranker files with repeated rows, filters that match nothing.

Every case runs the command line, expects its exit code and one ``error:`` line on stderr (no traceback), and
checks that every file that existed before (the store and the files around it) is byte-identical afterwards.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
from support import assert_one_line_error, assert_unchanged, cli, invoke, tree_hashes

import rescore

BIG = "99999999999999999999999"  # > 2^64
JUST_OVER = str(2**63)  # fits unsigned 64 bits, not Arrow's int64
DATA = Path(rescore.__file__).resolve().parent / "data"  # the demo suite's data, shipped in the package
NOT_UTF8 = b"\xff\xfe not text \x80\n"


def error_line(r: Any, code: int, *needles: str, summary: bool = False) -> str:
    """Exit ``code``, no traceback, and the error on one line (``summary``: score's summary lines may come
    first); every needle is in that line."""
    err = assert_one_line_error(r, code)
    lines = [x for x in err.strip().splitlines() if x.strip()]
    if not summary:
        assert len(lines) == 1, err
    errors = [x for x in lines if x.startswith("error:")]
    assert len(errors) == 1, err
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scored store: arc_easy (loglikelihood) and gsm8k_chat (generate, 2 seeds x 2 candidates), fake model."""
    st = tmp_path_factory.mktemp("adv") / "st"
    r = invoke("gen", "demo", "--model", "fake", "--store", st, "-t", "arc_easy", "-t", "gsm8k_chat", "--no-progress")
    assert r.exit_code == 0, r.output
    r = invoke("score", "--store", st)
    assert r.exit_code == 0, r.output
    return st


@pytest.fixture
def store(base_store: Path, tmp_path: Path) -> Path:
    """This test's own copy of the scored store, under tmp_path (so a snapshot of tmp_path covers both)."""
    st = tmp_path / "st"
    shutil.copytree(base_store, st, symlinks=True)
    return st


def run_unchanged(tmp_path: Path, *args: Any, subprocess: bool = False) -> Any:
    """Run ``rescore ARGS`` and check every file under tmp_path is as it was."""
    before = tree_hashes(tmp_path)
    assert before, "nothing to compare"
    r = cli(*map(str, args)) if subprocess else invoke(*args)
    assert_unchanged(before, tree_hashes(tmp_path))
    return r


def suite_file(tmp_path: Path, body: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


ARC_TASK = f"""
    name: adv
    data_root: {DATA}
    tasks:
      - name: arc
        family: multiple_choice
        source: {{path: arc_easy/arc_easy.jsonl}}
        subset_size: 2
        params: {{prompt: arc, schema: llm_foundry}}
"""


def matrix_file(tmp_path: Path, *, path: str = "/ckpts/s1/step_{step}", steps: str = "[100, 200]",
                extra: str = "") -> Path:
    return suite_file(tmp_path, f"""
        name: m
        backend: fake
        suites: [demo]
        stages:
          - name: s1
            path: "{path}"
            steps: {steps}
        {extra}
    """, "m.yaml")


# -- 9. integers beyond 64 bits: every integer option, every config value ---------------------------------
@pytest.mark.parametrize("args", [
    ["gen", "demo", "--model", "fake", "--step", BIG],
    ["gen", "demo", "--model", "fake", "--step", JUST_OVER],
    ["gen", "demo", "--model", "fake", "--batch-size", BIG],
    ["gen", "demo", "--model", "fake", "--fake-fail-after", BIG],
    ["import", "lm-eval", "DIR", "--step", BIG],
    ["score", "--jobs", BIG],
    ["show", "abc", "--rows", BIG],
    ["compare", "-b", "fake", "--resamples", BIG],
    ["compare", "-b", "fake", "--seed", BIG],
    ["verify", "determinism", "abc", "--rows", BIG],
    ["backfill", "M", "--cpus", BIG],
    ["backfill", "M", "--units-per-job", BIG],
], ids=lambda a: "-".join(x for x in a if x.startswith("--") or x in ("gen", "import", "show", "score", "compare",
                                                                                  "verify", "backfill")))
def test_an_integer_option_beyond_64_bits_is_a_usage_error(tmp_path: Path, store: Path, args: list[str]) -> None:
    r = run_unchanged(tmp_path, *args, "--store", store)
    error_line(r, 2, "Invalid value for", "see `rescore")


def test_every_integer_option_refuses_values_beyond_64_bits() -> None:
    """A guard for options added later: every integer option of every command, given 2^63 or -2^63-1, is a
    usage error (exit 2, one line) before the command runs."""
    import typer.main

    from rescore.cli import app

    def int_options(cmd: Any, path: list[str]) -> list[tuple[list[str], str]]:
        out = []
        args = ["x" for p in cmd.params if p.param_type_name == "argument"]
        for p in cmd.params:
            ann = getattr(getattr(p, "type_descriptor", None), "annotation", None)
            if p.param_type_name == "option" and (ann is int or getattr(getattr(p, "type", None), "name", "") == "integer"):
                out.append(([*path, *args], p.opts[0]))
        for name, sub in getattr(cmd, "commands", {}).items():
            out += int_options(sub, [*path, name])
        return out

    found = int_options(typer.main.get_command(app), [])
    assert len(found) >= 15  # the walk sees the options (gen --step, score --jobs, ...)
    bad = []
    for words, opt in found:
        for value in (str(2**63), str(-(2**63) - 1)):
            r = invoke(*words, opt, value)
            if r.exit_code != 2 or "Invalid value for" not in (r.stderr or "") or len(r.stderr.splitlines()) != 1:
                bad.append(f"rescore {' '.join(words)} {opt} {value}: exit {r.exit_code} {r.stderr[-200:]!r}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("where, body, needle", [
    ("suite seeds", ARC_TASK.replace("    tasks:", f"    seeds: [{BIG}]\n    tasks:"), "seeds"),
    ("task param", ARC_TASK.replace("prompt: arc,", f"prompt: arc, extra: [[{JUST_OVER}]],"), "64 bits"),
    ("task subset_seed", ARC_TASK.replace("subset_size: 2", f"subset_size: 2\n        subset_seed: {BIG}"),
     "subset_seed"),
])
def test_a_config_integer_beyond_64_bits_is_a_config_error(tmp_path: Path, store: Path, where: str, body: str,
                                                          needle: str) -> None:
    suite = suite_file(tmp_path, body)
    r = run_unchanged(tmp_path, "gen", suite, "--model", "fake", "--store", store)
    error_line(r, 2, "64 bits", needle)


def test_an_override_beyond_64_bits_is_a_config_error(tmp_path: Path, store: Path) -> None:
    r = run_unchanged(tmp_path, "gen", "demo", "--model", "fake", "--store", store, "-t", "arc_easy",
                      "-O", f"tasks.arc_easy.subset_seed={BIG}")
    error_line(r, 2, "subset_seed", "64 bits")


def test_an_infinite_sampling_parameter_is_a_config_error(tmp_path: Path, store: Path) -> None:
    """A manifest is JSON, which has no inf: it would record null for the temperature the unit ran with."""
    r = run_unchanged(tmp_path, "gen", "demo", "--model", "fake", "--store", store, "-t", "gsm8k_chat",
                      "-O", "tasks.gsm8k_chat.gen.temperature=.inf")
    error_line(r, 2, "gen.temperature", "not a finite number")


def test_an_infinite_policy_bound_is_a_config_error(tmp_path: Path, store: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - metric: acc\n    max_regression: .inf\n")  # gates nothing: use skip: true
    r = run_unchanged(tmp_path, "compare", "--store", store, "-b", "fake", "--policy", policy)
    error_line(r, 2, "max_regression", "finite")


def test_a_models_file_step_beyond_64_bits_is_a_config_error(tmp_path: Path, store: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  - {{name: big, path: fake, backend: fake, step: {BIG}}}\n")
    r = run_unchanged(tmp_path, "gen", "demo", "--model", models, "--store", store, "-t", "arc_easy")
    error_line(r, 2, "step", "64 bits")


def test_a_metric_parameter_beyond_64_bits_is_a_config_error(tmp_path: Path, store: Path) -> None:
    r = run_unchanged(tmp_path, "score", "--store", store, "-M", f"pass_at_k:k={BIG}")
    error_line(r, 2, "metric parameter 'k'", "64 bits")


# -- 9. files that are not UTF-8, or nest too deeply to read ----------------------------------------------
def _import_mapping(tmp_path: Path, **model: Any) -> tuple[Path, Path]:
    """A 3-problem best-of-2 JSONL and its mapping (model fields overridable)."""
    rows = [json.loads(x) for x in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()[:4]]
    data = tmp_path / "bon.jsonl"
    data.write_text("".join(json.dumps({"id": i, "answer": r["answer"], "cands": [r["answer"], rows[i + 1]["answer"]]})
                            + "\n" for i, r in enumerate(rows[:3])))
    mapping = tmp_path / "map.yaml"
    mapping.write_text(json.dumps({"task": "gsm8k_bon", "model": {"name": "imp", "path": "/ckpt/imp", **model},
                                   "seed": 0, "gen": {"temperature": 0.8, "n": 2},
                                   "fields": {"sample_id": "id", "candidates": "cands", "target": "answer"}}))
    return data, mapping


@pytest.mark.parametrize("kind", ["suite", "models", "matrix", "policy", "import-mapping", "results-mapping",
                                  "sft-prompts"])
def test_a_config_file_that_is_not_utf8_is_named(tmp_path: Path, store: Path, kind: str) -> None:
    bad = tmp_path / f"{kind}.yaml"
    bad.write_bytes(b"name: x\n" + NOT_UTF8)
    sft = suite_file(tmp_path, f"""
        name: sft
        tasks:
          - name: sft
            family: sft_native
            chat: true
            params: {{prompts_file: {bad}}}
    """, "sft.yaml")
    args = {
        "suite": ["gen", bad, "--model", "fake"],
        "sft-prompts": ["gen", sft, "--model", "fake"],
        "models": ["gen", "demo", "--model", bad, "-t", "arc_easy"],
        "matrix": ["plan", bad],
        "policy": ["compare", "-b", "fake", "--policy", bad],
        "import-mapping": ["import", "jsonl", _import_mapping(tmp_path)[0], "--map", bad],
        "results-mapping": ["plan", "--from-results", str(tmp_path / "r*.json"), "--map", bad],
    }[kind]
    r = run_unchanged(tmp_path, *args, "--store", store)
    error_line(r, 2, str(bad), "line 2 is not UTF-8", "save the file as UTF-8")


@pytest.mark.parametrize("kind", ["suite", "override", "import-mapping"])
def test_yaml_nested_5000_deep_is_a_config_error(tmp_path: Path, store: Path, kind: str) -> None:
    deep = "[" * 5000 + "]" * 5000
    bad = tmp_path / "deep.yaml"
    bad.write_text(f"name: x\nseeds: {deep}\n")
    args = {
        "suite": ["gen", bad, "--model", "fake"],
        "override": ["gen", "demo", "--model", "fake", "-t", "arc_easy", "-O", f"tasks.arc_easy.params.x={deep}"],
        "import-mapping": ["import", "jsonl", _import_mapping(tmp_path)[0], "--map", bad],
    }[kind]
    r = run_unchanged(tmp_path, *args, "--store", store)
    error_line(r, 2, "nested too deeply")


@pytest.mark.parametrize("content, needle", [
    (NOT_UTF8, "line 4 is not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", ":4: JSON nested too deeply"),
    (b"[1, 2]\n", ":4: expected a JSON object, got list"),
    (b"{not json\n", ":4: not valid JSON"),  # line 4, not "line 1" of the line's own text
], ids=["not-utf8", "deep", "not-an-object", "malformed"])
def test_a_bad_data_jsonl_line_is_named_by_its_line_number(tmp_path: Path, store: Path, content: bytes,
                                                          needle: str) -> None:
    lines = (DATA / "arc_easy" / "arc_easy.jsonl").read_bytes().splitlines(keepends=True)[:3]
    data = tmp_path / "data"
    data.mkdir()
    (data / "arc.jsonl").write_bytes(b"".join(lines) + content)
    suite = suite_file(tmp_path, ARC_TASK.replace(str(DATA), str(data)).replace("arc_easy/arc_easy.jsonl", "arc.jsonl"))
    r = run_unchanged(tmp_path, "gen", suite, "--model", "fake", "--store", store)
    error_line(r, 2, str(data / "arc.jsonl"), needle)


def test_a_data_csv_line_that_cannot_be_read_is_named(tmp_path: Path, store: Path) -> None:
    data = tmp_path / "mmlu"
    data.mkdir()
    (data / "x_test.csv").write_text('What?,a,b,c,d,A\n"' + "a" * 200_000 + '",a,b,c,d,B\n')  # over csv's field limit
    suite = suite_file(tmp_path, f"""
        name: mm
        tasks:
          - name: mm
            family: multiple_choice
            source: {{path: {data}, format: csv}}
            params: {{prompt: mmlu, schema: mmlu_csv}}
    """)
    r = run_unchanged(tmp_path, "gen", suite, "--model", "fake", "--store", store)
    error_line(r, 2, str(data / "x_test.csv") + ":2", "field limit")


def test_a_command_line_argument_that_is_not_utf8_is_a_usage_error(tmp_path: Path, store: Path) -> None:
    data, mapping = _import_mapping(tmp_path)
    odd = tmp_path / "b\udcff.jsonl"  # the byte 0xff in the file name (surrogate-escaped by Python)
    shutil.copy(data, odd)
    r = run_unchanged(tmp_path, "import", "jsonl", odd, "--map", mapping, "--store", store, subprocess=True)
    error_line(r, 2, "is not UTF-8 text", "rename")


def test_a_data_file_name_that_is_not_utf8_is_named(tmp_path: Path, store: Path) -> None:
    data = tmp_path / "mmlu"
    data.mkdir()
    (data / "x\udcff_test.csv").write_text("What?,a,b,c,d,A\n")
    suite = suite_file(tmp_path, f"""
        name: mm
        tasks:
          - name: mm
            family: multiple_choice
            source: {{path: {data}, format: csv}}
            params: {{prompt: mmlu, schema: mmlu_csv}}
    """)
    r = run_unchanged(tmp_path, "gen", suite, "--model", "fake", "--store", store)
    error_line(r, 2, "the file name is not UTF-8 text")


def test_a_reranker_file_that_is_not_utf8_is_named(tmp_path: Path, store: Path) -> None:
    bad = tmp_path / "r.csv"
    bad.write_bytes(b"sample_id,candidate,score\n" + NOT_UTF8.strip() + b",0,1\n")
    r = run_unchanged(tmp_path, "score", "--store", store, "--reranker", bad)
    error_line(r, 2, "cannot read reranker file", str(bad))


def test_a_results_file_that_is_not_utf8_is_named(tmp_path: Path, store: Path) -> None:
    (tmp_path / "results_1.json").write_bytes(b'{"config": "' + NOT_UTF8 + b'"}')
    mapping = tmp_path / "map.yaml"
    mapping.write_text("suite: demo\ntasks: {arc_easy: arc_easy}\nmodel: {backend: fake}\n")
    r = run_unchanged(tmp_path, "plan", "--from-results", str(tmp_path / "results_*.json"), "--map", mapping,
                      "--store", store)
    error_line(r, 1, "results_1.json", "not a results file")


# -- 9. format placeholders other than the known ones -------------------------------------------------------
@pytest.mark.parametrize("path, needle", [
    ("/ckpts/s1/{step}{evil}", "placeholder {evil}"),
    ("/ckpts/s1/{step.real}", "placeholder {step.real}"),
    ("/ckpts/s1/{step!r}", "placeholder {step!r}"),
    ("/ckpts/s1/{}", "placeholder {}"),
    ("/ckpts/s1/{step", "not a valid pattern"),
    ("/ckpts/s1/{step:zz}", "not a format for an integer"),
])
def test_a_matrix_path_with_an_unknown_placeholder_is_a_config_error(tmp_path: Path, store: Path, path: str,
                                                                     needle: str) -> None:
    r = run_unchanged(tmp_path, "plan", matrix_file(tmp_path, path=path), "--store", store)
    error_line(r, 2, "stages.0.path", needle)


def test_a_matrix_path_with_a_step_format_and_literal_braces_is_accepted(tmp_path: Path, store: Path) -> None:
    r = invoke("plan", matrix_file(tmp_path, path="/ckpts/{{s1}}/step_{step:07d}"), "--store", store, "--json")
    assert r.exit_code == 0, r.output
    assert {u["step"] for u in json.loads(r.stdout)["units"]} == {100, 200}


@pytest.mark.parametrize("fmt", ["{evil}", "{0.__class__}", "{}{}", "no placeholder"])
def test_a_sample_id_format_with_other_placeholders_is_a_config_error(tmp_path: Path, store: Path, fmt: str) -> None:
    data, mapping = _import_mapping(tmp_path)
    m = json.loads(mapping.read_text())
    m["sample_id_format"] = fmt
    mapping.write_text(json.dumps(m))
    r = run_unchanged(tmp_path, "import", "jsonl", data, "--map", mapping, "--store", store)
    error_line(r, 2, "sample_id_format")


def test_a_name_pattern_with_an_unknown_placeholder_is_a_config_error(tmp_path: Path, store: Path) -> None:
    mapping = tmp_path / "map.yaml"
    mapping.write_text("suite: demo\ntasks: {arc_easy: arc_easy}\nmodel: {backend: fake, name: '{basename}{evil}'}\n")
    r = run_unchanged(tmp_path, "plan", "--from-results", str(tmp_path / "r*.json"), "--map", mapping, "--store", store)
    error_line(r, 2, "model.name", "placeholder {evil}")


# -- 9. re-import over a damaged manifest -----------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "not-an-object"])
def test_reimport_over_a_damaged_manifest_names_it_and_writes_nothing(tmp_path: Path, store: Path, damage: str) -> None:
    data, mapping = _import_mapping(tmp_path)
    first = invoke("import", "jsonl", data, "--map", mapping, "--store", store, "--json")
    assert first.exit_code == 0, first.output
    (unit,) = json.loads(first.stdout)["units"]
    manifest = store / "gen" / unit["run_id"] / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:300] if damage == "truncated" else b"[]\n")
    r = run_unchanged(tmp_path, "import", "jsonl", data, "--map", mapping, "--store", store)
    error_line(r, 1, str(manifest), "not a valid manifest", f"remove {manifest.parent}")


# -- 10. silent no-ops ------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b"\n  \n\n"], ids=["empty", "blank-lines"])
def test_an_empty_task_data_file_is_an_error_naming_it(tmp_path: Path, store: Path, content: bytes) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "arc.jsonl").write_bytes(content)
    suite = suite_file(tmp_path, ARC_TASK.replace(str(DATA), str(data)).replace("arc_easy/arc_easy.jsonl", "arc.jsonl"))
    units = sorted(p.name for p in (store / "gen").iterdir())
    r = run_unchanged(tmp_path, "gen", suite, "--model", "fake", "--store", store)
    error_line(r, 1, str(data / "arc.jsonl"), "holds no rows")
    assert sorted(p.name for p in (store / "gen").iterdir()) == units  # no "complete" unit of 0 rows


@pytest.mark.parametrize("args, needle", [
    (["-O", "seeds=[]"], "empty seeds list"),
    (["-O", "tasks.gsm8k_chat.seeds=[]"], "empty seeds list"),
    (["-O", "seeds=[0, 0]"], "seeds repeat [0]"),
    (["--seeds", ","], "empty seeds list"),
    (["--seeds", ""], "empty seeds list"),
    (["--seeds", "1,1"], "seeds repeat [1]"),
], ids=["suite-seeds", "task-seeds", "suite-repeat", "flag-comma", "flag-empty", "flag-repeat"])
def test_a_seed_list_that_runs_nothing_or_twice_is_a_config_error(tmp_path: Path, store: Path, args: list[str],
                                                                  needle: str) -> None:
    r = run_unchanged(tmp_path, "gen", "demo", "--model", "fake", "--store", store, "-t", "gsm8k_chat", *args)
    error_line(r, 2, needle)


def test_a_matrix_with_no_seeds_is_a_config_error(tmp_path: Path, store: Path) -> None:
    r = run_unchanged(tmp_path, "plan", matrix_file(tmp_path, extra="seeds: []"), "--store", store)
    error_line(r, 2, "seeds", "empty seeds list")


PLUGINS = {
    "misspelt-column": ('@metric(version=1, request_type="generate", columns=["candidatez"])\n'
                        'def cand_len(table):\n    return pc.list_value_length(table["candidatez"])\n',
                        2, ["'cand_len'", "'candidatez'", "did you mean 'candidates'"]),
    "all-null": ('@metric(version=1, request_type="generate", columns=["candidates"])\n'
                 'def nothing(table):\n    return [None] * table.num_rows\n',
                 1, ["'nothing'", "no value on any row"]),
    "exit-in-metric": ('@metric(version=1, request_type="generate", columns=["candidates"])\n'
                       'def bye(table):\n    sys.exit(3)\n',
                       1, ["'bye'", "called sys.exit(3)"]),
    "exit-on-import": ("sys.exit(3)\n", 2, ["failed to import", "called sys.exit(3)"]),
    "multi-line-error": ('@metric(version=1, request_type="generate", columns=["candidates"])\n'
                         'def ml(table):\n    raise ValueError("first line\\nsecond line")\n',
                         1, ["'ml'", "ValueError: first line second line"]),
}


@pytest.mark.parametrize("case", list(PLUGINS))
def test_a_plugin_that_measures_nothing_or_exits_is_a_named_error(tmp_path: Path, store: Path, case: str) -> None:
    code, rc, needles = PLUGINS[case]
    plugin = tmp_path / "plug.py"
    plugin.write_text("import sys\nimport pyarrow.compute as pc\nfrom rescore.score import metric\n\n" + code)
    r = run_unchanged(tmp_path, "score", "--store", store, "--plugin", plugin, "--no-progress", subprocess=True)
    line = error_line(r, rc, *needles, summary=True)
    assert str(plugin) in line or "plug.py" in line  # the plugin is named


def test_a_plugin_metric_with_no_value_fails_again_when_its_scores_are_up_to_date(tmp_path: Path, store: Path) -> None:
    plugin = tmp_path / "plug.py"
    plugin.write_text("from rescore.score import metric\n\n" + PLUGINS["all-null"][0])
    assert cli("score", "--store", str(store), "--plugin", str(plugin)).returncode == 1
    again = run_unchanged(tmp_path, "score", "--store", store, "--plugin", plugin, subprocess=True)
    error_line(again, 1, "'nothing'", "no value on any row", summary=True)


@pytest.mark.parametrize("args, needle", [
    (["results", "--seed", "99"], "--seed '99' matches no results"),
    (["results", "--subset", "nosuch"], "--subset 'nosuch' matches no results"),
    (["results", "--task", "arc_easy", "--metric", "pass_at_1"], "no result row matches"),
    (["compare", "-b", "fake", "--task", "arc_eazy"], "--task 'arc_eazy' matches no complete unit"),
    (["export", "tiers", "OUT", "-m", "nosuch*"], "--model 'nosuch*' matches no results"),
], ids=["results-seed", "results-subset", "results-together", "compare-task", "export-model"])
def test_a_filter_that_matches_nothing_says_so(tmp_path: Path, store: Path, args: list[str], needle: str) -> None:
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    r = run_unchanged(tmp_path, *args, "--store", store)
    error_line(r, 2, needle)
    assert not (tmp_path / "out").exists()


def test_verify_against_a_results_file_with_no_rows_fails(tmp_path: Path, store: Path) -> None:
    empty = tmp_path / "old.json"
    empty.write_text("[]\n")
    r = run_unchanged(tmp_path, "verify", "--store", store, "--against", empty)
    error_line(r, 1, str(empty), "nothing to reproduce")


# -- 11. reranker rows, negative steps -------------------------------------------------------------------
@pytest.mark.parametrize("name, content, needle", [
    ("dup.csv", "sample_id,candidate,score\n00000001,0,1.0\n00000001,0,2.0\n", "row 2 repeats row 1"),
    ("frac.csv", "sample_id,candidate,score\n00000001,0,1.0\n00000001,1.5,2.0\n", "candidate 1.5 is not"),
    ("frac.jsonl", '{"sample_id": "00000001", "candidate": 1.5, "score": 1}\n', "candidate 1.5 is not"),
    ("neg.jsonl", '{"sample_id": "00000001", "candidate": -1, "score": 1}\n', "candidate -1 is not"),
    ("bool.jsonl", '{"sample_id": "00000001", "candidate": true, "score": 1}\n', "candidate True is not"),
], ids=["duplicate", "fraction-csv", "fraction-jsonl", "negative", "boolean"])
def test_a_reranker_file_with_a_repeated_row_or_a_non_index_candidate_is_refused(tmp_path: Path, store: Path,
                                                                                name: str, content: str,
                                                                                needle: str) -> None:
    f = tmp_path / name
    f.write_text(content)
    r = run_unchanged(tmp_path, "score", "--store", store, "--reranker", f)
    error_line(r, 2, str(f), needle)


def test_reranker_rows_for_other_units_are_not_repeats(tmp_path: Path, store: Path) -> None:
    f = tmp_path / "ok.csv"
    f.write_text("sample_id,candidate,score,seed\n00000001,0,1.0,0\n00000001,0,2.0,1\n00000001,1.0,0.5,0\n")
    r = invoke("score", "--store", store, "--reranker", f)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("steps", ["[100, -5]", f"[100, {BIG}]"], ids=["negative", "beyond-64-bits"])
def test_a_matrix_step_that_is_negative_or_too_large_is_a_config_error(tmp_path: Path, store: Path, steps: str) -> None:
    r = run_unchanged(tmp_path, "plan", matrix_file(tmp_path, steps=steps), "--store", store)
    error_line(r, 2, "stages.0.steps")


@pytest.mark.parametrize("args", [["gen", "demo", "--model", "fake", "-t", "arc_easy", "--step", "-1"],
                                  ["import", "lm-eval", "DIR", "--step", "-1"]], ids=["gen", "import"])
def test_a_negative_step_flag_is_a_usage_error(tmp_path: Path, store: Path, args: list[str]) -> None:
    r = run_unchanged(tmp_path, *args, "--store", store)
    error_line(r, 2, "--step", "greater than or equal to 0")


def test_a_negative_step_in_an_import_mapping_is_a_config_error(tmp_path: Path, store: Path) -> None:
    data, mapping = _import_mapping(tmp_path, step=-3)
    r = run_unchanged(tmp_path, "import", "jsonl", data, "--map", mapping, "--store", store)
    error_line(r, 2, "model.step")
