"""Damaged and misplaced store files, met on the command line: every read checks what it reads, a damaged
derived file (results.parquet, a score file) is rebuilt and never shown, a damaged or misplaced data file
(rows.parquet, manifest.json, rows.jsonl) is named in one line and left exactly as it was while the other
units go on, and ``rescore verify`` finds each of them.

Each case damages a copy of one small store (two fake checkpoints x two multiple-choice tasks, GSM8K under
two seeds, two WikiText-2 documents; built once per module from the shared data), runs the CLI, and checks
the exit code, the one-line error, and that every file of the store and around it is byte-identical
afterwards except the derived files the command is documented to rebuild (those are checked to be rebuilt
correctly). Commands run in this process (typer's runner) unless what is checked is the process itself
(warnings as printed, exit codes of a fresh interpreter).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from support import assert_one_line_error, assert_unchanged, cli, invoke, tree_hashes

from rescore.artifacts.store import Store

SUITE = """
name: adv
data_root: {data}
seeds: [0, 1]
tasks:
  - name: arc_easy
    family: multiple_choice
    source: {{path: arc_easy/arc_easy.jsonl}}
    subset_size: 6
    params: {{prompt: arc, schema: llm_foundry}}
  - name: arc_challenge
    family: multiple_choice
    source: {{path: arc_challenge/arc_challenge.jsonl}}
    subset_size: 6
    params: {{prompt: arc, schema: llm_foundry}}
  - name: gsm8k
    family: gsm8k
    source: {{path: gsm8k/test.jsonl}}
    subset_size: 3
    gen: {{temperature: 0.7, n: 2, max_new_tokens: 16}}
  - name: wikitext2_docs
    family: ppl_docs
    source: {{path: wikitext2/wiki.test.raw, format: txt}}
    subset_size: 2
    params: {{documents: wikitext_pages, line_ending: crlf_doubled, detokenize: wikitext}}
"""

MODELS = """
models:
  - {name: ckpt-a, path: /ckpts/run1/step_100, backend: fake, step: 100, options: {p_correct: 0.3}}
  - {name: ckpt-b, path: /ckpts/run1/step_200, backend: fake, step: 200, options: {p_correct: 0.8}}
"""


# -- running the CLI ---------------------------------------------------------------------------------------
def run(*args: Any) -> Any:
    """``rescore ARGS`` in this process. A crash is re-raised here (the runner would swallow its traceback)."""
    r = invoke(*map(str, args))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r


def one_line_error(r: Any, *needles: str, code: int = 1) -> str:
    """A failure with exit ``code``, no traceback, and an ``error:`` line on stderr that holds every needle."""
    err = assert_one_line_error(r, code)
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert lines, err
    assert any(all(n in ln for n in needles) for ln in lines), (needles, err[-3000:])
    return err


# -- the store ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> Path:
    d = tmp_path_factory.mktemp("adv")
    (d / "suite.yaml").write_text(SUITE.format(data=shared_data_dir))
    (d / "models.yaml").write_text(MODELS)
    store = d / "store"
    assert run("gen", d / "suite.yaml", "--model", d / "models.yaml", "--store", store, "--direct",
               "--no-progress").exit_code == 0
    assert run("score", "--store", store, "--no-progress").exit_code == 0
    return d


@pytest.fixture(scope="module")
def shared_data_dir() -> Path:
    from conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


class Case:
    """A fresh copy of the store in ``root`` (with a neighbouring file that nothing may touch)."""

    def __init__(self, base: Path, root: Path) -> None:
        shutil.copytree(base, root, symlinks=True)
        self.root = root
        self.store = root / "store"
        self.suite, self.models = root / "suite.yaml", root / "models.yaml"
        (root / "neighbour").mkdir()
        (root / "neighbour" / "keep.txt").write_text("not the store's\n")
        self.units = {(u.manifest["model"]["name"], u.manifest["task"]["name"], u.manifest["seed"]): u
                      for u in Store(self.store).units()}
        self.before = tree_hashes(root)

    def unit(self, model: str, task: str, seed: int = 0) -> Any:
        return self.units[(model, task, seed)]

    def rows(self, model: str, task: str, seed: int = 0) -> Path:
        return self.unit(model, task, seed).parquet_path

    def score_file(self, model: str, task: str, metric: str, seed: int = 0) -> Path:
        return self.store / "scores" / self.unit(model, task, seed).run_id / f"{metric}@1.arrow"

    @property
    def results(self) -> Path:
        return self.store / "results.parquet"

    def unchanged(self, *rebuilt: Path | Callable[[str], bool]) -> None:
        """Every file that existed before has its bytes, except ``rebuilt`` (paths, or tests of a path)."""
        tests = [r for r in rebuilt if callable(r)]
        paths = {str(r) for r in rebuilt if not callable(r)}
        keep = {p: h for p, h in self.before.items() if p not in paths and not any(t(p) for t in tests)}
        assert_unchanged(keep, tree_hashes(self.root))

    def result_values(self) -> dict[tuple, float | None]:
        t = pq.read_table(self.results)
        return {(r["model"], r["task"], r["subset"], r["metric"], r["seed"]): r["value"] for r in t.to_pylist()}


@pytest.fixture
def case(base: Path, tmp_path: Path) -> Case:
    return Case(base, tmp_path / "case")


def is_derived(path: str) -> bool:
    """What `score` may rewrite: results.parquet, the score files and their index."""
    return path.endswith("results.parquet") or "/scores/" in path


def flip(path: Path, offset: int, bit: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def keep_times(path: Path, damage: Callable[[Path], None]) -> None:
    """Damage a file and give it back its size and mtime (as bit rot would leave it)."""
    st = path.stat()
    damage(path)
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def rot(path: Path, offset: int) -> None:
    """Bit rot: a flipped bit in a file whose size and mtime stay what its unit's score index recorded."""
    keep_times(path, lambda p: flip(p, offset))


def swap(a: Path, b: Path) -> None:
    tmp = a.with_name("swap.tmp")
    os.replace(a, tmp)
    os.replace(b, a)
    os.replace(tmp, b)


def footer_start(path: Path) -> int:
    data = path.read_bytes()
    return len(data) - 8 - int.from_bytes(data[-8:-4], "little")


def score_values(path: Path) -> pa.Table:
    with pa.OSFile(str(path), "rb") as f:
        return ipc.open_file(f).read_all().select(["value"])


# == results.parquet: checked on every read, rebuilt when damaged, never shown ================================
def _results_offsets(path: Path) -> dict[str, int]:
    n = path.stat().st_size
    return {"first page": 40, "middle": n // 2, "footer": footer_start(path) + 40, "last footer byte": n - 9}


@pytest.mark.parametrize("where", ["first page", "middle", "footer", "last footer byte"])
def test_results_with_a_flipped_bit_are_rebuilt_not_shown(case: Case, where: str) -> None:
    from rescore.score.engine import DamagedFileWarning

    truth = case.results.read_bytes()
    want = case.result_values()
    flip(case.results, _results_offsets(case.results)[where])
    args = ("results", "--store", case.store, "--seed", "*", "--subset", "*", "--format", "json")
    if where == "first page":  # as printed by a fresh process: one warning line
        out = cli(*args)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        assert f"warning: corrupt file {case.results}" in out.stderr, out.stderr
        assert "rebuilt it from the score files" in out.stderr
        stdout = out.stdout
    else:
        with pytest.warns(DamagedFileWarning, match="rebuilt it from the score files"):
            r = run(*args)
        assert r.exit_code == 0, r.output
        stdout = r.stdout
    shown = {(r["model"], r["task"], r["subset"], r["metric"], r["seed"]): r["value"] for r in json.loads(stdout)}
    assert shown == want
    assert case.results.read_bytes() == truth  # rebuilt: the same table, the same bytes
    case.unchanged(case.results)


def test_truncated_results_are_rebuilt_for_an_export(case: Case) -> None:
    truth = case.results.read_bytes()
    case.results.write_bytes(truth[: len(truth) // 3])
    from rescore.score.engine import DamagedFileWarning

    out = case.root / "out"
    with pytest.warns(DamagedFileWarning, match="rebuilt it from the score files"):
        r = run("export", "tiers", out, "--store", case.store)
    assert r.exit_code == 0, r.output
    assert case.results.read_bytes() == truth
    tier3 = json.loads(next(out.glob("by_checkpoint/step_200/tier3_cf.json")).read_text())
    assert "arc_easy" in json.dumps(tier3)
    case.unchanged(case.results)


def test_score_rebuilds_damaged_results(case: Case) -> None:
    truth = case.results.read_bytes()
    flip(case.results, 100)
    r = run("score", "--store", case.store)
    assert r.exit_code == 0, r.output
    assert case.results.read_bytes() == truth
    case.unchanged(case.results)


# == score files: checksummed, bound to their name and unit, recomputed when damaged =========================
def test_a_rewritten_score_file_with_a_flipped_bit_is_recomputed(case: Case) -> None:
    path = case.score_file("ckpt-b", "arc_easy", "acc")
    values = score_values(path)
    flip(path, path.stat().st_size // 2)
    r = run("score", "--store", case.store)
    assert r.exit_code == 0, r.output
    assert "1 score" in r.stderr  # that file, and nothing else
    assert score_values(path).equals(values)
    case.unchanged(path, path.parent / "_index.json", case.results)


def test_bit_rot_the_index_cannot_see_is_found_by_verify_and_then_recomputed(case: Case) -> None:
    """Damage that leaves size and mtime as the index recorded them: `score` trusts the index (whose own
    checksummed copy of the aggregates is what results show), `verify` reads every score file whole, names
    it, and the next `score` recomputes it."""
    path = case.score_file("ckpt-a", "gsm8k", "exact_match_flexible", seed=1)
    index = path.parent / "_index.json"
    values = score_values(path)
    want = case.result_values()
    rot(path, 300)
    case.before = tree_hashes(case.root)
    assert run("score", "--store", case.store).exit_code == 0  # trusts the index: nothing to do, nothing shown
    case.unchanged()
    assert case.result_values() == want
    v = run("verify", "--store", case.store)
    one_line_error(v, "1 problem(s)", str(path))
    again = run("score", "--store", case.store)
    assert again.exit_code == 0 and "computed 1 score" in again.stderr, again.stderr
    assert score_values(path).equals(values)
    assert run("verify", "--store", case.store).exit_code == 0
    case.unchanged(path, index, case.results)


@pytest.mark.parametrize("source", ["another metric", "another unit"])
def test_a_score_file_copied_over_another_is_recomputed(case: Case, source: str) -> None:
    target = case.score_file("ckpt-a", "arc_easy", "acc")
    src = (case.score_file("ckpt-a", "arc_easy", "acc_norm") if source == "another metric"
           else case.score_file("ckpt-b", "arc_easy", "acc"))
    values = score_values(target)
    want = case.result_values()
    shutil.copyfile(src, target)
    r = run("score", "--store", case.store)
    assert r.exit_code == 0, r.output
    assert score_values(target).equals(values) and case.result_values() == want
    case.unchanged(target, target.parent / "_index.json", case.results)


def test_compare_never_bootstraps_a_damaged_score_file(case: Case) -> None:
    path = case.score_file("ckpt-b", "arc_challenge", "acc")
    values = score_values(path)
    rot(path, path.stat().st_size // 2)
    case.before = tree_hashes(case.root)
    r = run("compare", "--store", case.store, "--baseline", "ckpt-a", "--task", "arc_challenge", "--metric", "acc",
            "--format", "csv")
    one_line_error(r, "corrupt file", str(path))
    assert "0.833" not in r.stdout  # nothing of it was printed
    case.unchanged(path.parent / "_index.json")  # the damaged file is dropped from the index (a cache)
    assert run("score", "--store", case.store).exit_code == 0
    assert score_values(path).equals(values)


def test_a_truncated_score_file_is_left_out_then_recomputed(case: Case) -> None:
    path = case.score_file("ckpt-a", "wikitext2_docs", "bits_per_byte")
    values = score_values(path)
    want = case.result_values()
    path.write_bytes(path.read_bytes()[:100])
    r = run("score", "--store", case.store)
    assert r.exit_code == 0 and "computed 1 score" in r.stderr, r.output
    assert score_values(path).equals(values) and case.result_values() == want
    case.unchanged(path, path.parent / "_index.json", case.results)


# == rows.parquet: bound to its unit, checked on every read, never scored when damaged =======================
@pytest.mark.parametrize("pair", [("arc_easy", "arc_challenge", 0, 0), ("gsm8k", "gsm8k", 0, 1)],
                         ids=["two tasks", "two seeds"])
def test_swapped_rows_are_refused_with_their_paths(case: Case, pair: tuple[str, str, int, int]) -> None:
    ta, tb, sa, sb = pair
    a, b = case.unit("ckpt-a", ta, sa), case.unit("ckpt-a", tb, sb)
    swap(a.parquet_path, b.parquet_path)
    case.before = tree_hashes(case.root)
    want = case.result_values()
    r = run("score", "--store", case.store, "--force")
    err = one_line_error(r, f"error: unit {a.run_id[:12]} not scored: corrupt file {a.parquet_path}: it holds the "
                            f"rows of unit {b.run_id}")
    assert f"error: unit {b.run_id[:12]} not scored: corrupt file {b.parquet_path}" in err
    # the other units were scored; the swapped ones keep the scores of their own rows
    assert "scored 8 of 10 complete units" in r.stderr
    assert case.result_values() == want
    case.unchanged(lambda p: is_derived(p) and a.run_id not in p and b.run_id not in p)


def test_an_older_version_of_a_units_rows_is_refused(case: Case) -> None:
    from rescore.artifacts.store import write_rows_parquet

    unit = case.unit("ckpt-b", "arc_easy")
    table = pq.read_table(unit.parquet_path)
    write_rows_parquet(unit.parquet_path, table.slice(0, 5), unit.run_id)  # the same unit, other rows
    case.before = tree_hashes(case.root)
    r = run("score", "--store", case.store, "--force", "--metric", "acc")
    one_line_error(r, "corrupt file", str(unit.parquet_path), "manifest")
    case.unchanged(lambda p: is_derived(p) and unit.run_id not in p)


def test_show_refuses_rows_of_another_unit(case: Case) -> None:
    a, b = case.unit("ckpt-b", "arc_easy"), case.unit("ckpt-b", "arc_challenge")
    shutil.copyfile(b.parquet_path, a.parquet_path)
    case.before = tree_hashes(case.root)
    r = run("show", a.run_id, "--store", case.store, "--rows", "2")
    one_line_error(r, str(a.parquet_path), f"holds the rows of unit {b.run_id}")
    assert '"sample_id"' not in r.stdout
    case.unchanged()


def _garble_footer(p: Path) -> None:  # invalid UTF-8 where the footer holds names and metadata
    data = bytearray(p.read_bytes())
    start = footer_start(p)
    for i in range(start + 20, start + 220):
        data[i] = 0xFF
    p.write_bytes(bytes(data))


def scored_column(path: Path, name: str = "choice_sum_logprob") -> tuple[int, int]:
    """(offset, length) of the bytes of a column that every multiple-choice metric reads."""
    md = pq.read_metadata(path)
    col = next(md.row_group(0).column(i) for i in range(md.num_columns)
               if md.row_group(0).column(i).path_in_schema.split(".")[0] == name)
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    return start, col.total_compressed_size


def _zero_page(p: Path) -> None:  # the second half of the column's pages: page payload, not only headers
    start, n = scored_column(p)
    data = p.read_bytes()
    p.write_bytes(data[:start + n // 2] + bytes(n - n // 2) + data[start + n:])


DAMAGE: dict[str, Callable[[Path], None]] = {
    "garbled footer": _garble_footer,
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-20]),
    "zeroed page": _zero_page,
    "flipped bit in a page": lambda p: flip(p, sum(scored_column(p)) - 1, 3),
    "garbage appended": lambda p: p.write_bytes(p.read_bytes() + b"\x00" * 64),
    "deleted": lambda p: p.unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_rows_are_a_corrupt_file_never_a_metric_failure(case: Case, damage: str) -> None:
    unit = case.unit("ckpt-a", "arc_easy")
    DAMAGE[damage](unit.parquet_path)
    case.before = tree_hashes(case.root)
    want = {k: v for k, v in case.result_values().items() if k[0] != "ckpt-a" or k[1] != "arc_easy"}
    r = run("score", "--store", case.store, "--force")
    err = one_line_error(r, f"corrupt file {unit.parquet_path}")
    assert "metric" not in err.split("corrupt file", 1)[1].split("\n")[0]
    assert "scored 9 of 10 complete units" in r.stderr
    got = case.result_values()
    assert {k: v for k, v in got.items() if k[0] != "ckpt-a" or k[1] != "arc_easy"} == want
    case.unchanged(lambda p: is_derived(p) and unit.run_id not in p)


def test_rows_of_an_old_store_without_bindings_are_still_checked(tmp_path: Path) -> None:
    """The schema-1 fixture store has no binding metadata: it reads, and a swap is still refused (by the
    sha256 in its manifests)."""
    fixture = Path(__file__).parent / "fixtures" / "store_v1"
    store = tmp_path / "store_v1"
    shutil.copytree(fixture, store)
    assert run("verify", "--store", store).exit_code == 0
    units = sorted((u for u in Store(store).units() if u.request_type == "loglikelihood"), key=lambda u: u.run_id)
    a, b = units[0], units[1]
    swap(a.parquet_path, b.parquet_path)
    before = tree_hashes(tmp_path)
    r = run("score", "--store", store)
    one_line_error(r, f"corrupt file {a.parquet_path}", "sha256")
    assert_unchanged({p: h for p, h in before.items() if "/scores/" not in p and "results.parquet" not in p},
                     tree_hashes(tmp_path))


# == manifests: a damaged one is named by every command that leaves its unit out ==============================
MANIFEST_DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": lambda p: os.truncate(p, 300),
    "not an object": lambda p: p.write_text("[]\n"),
    "not UTF-8": lambda p: p.write_bytes(b"\xff\xfe" + p.read_bytes()[2:]),
    "empty": lambda p: p.write_bytes(b""),
}


@pytest.mark.parametrize("damage", list(MANIFEST_DAMAGE))
def test_score_names_a_unit_whose_manifest_is_damaged_and_scores_the_others(case: Case, damage: str) -> None:
    unit = case.unit("ckpt-b", "wikitext2_docs")
    manifest = unit.path / "manifest.json"
    MANIFEST_DAMAGE[damage](manifest)
    case.before = tree_hashes(case.root)
    args = ("score", "--store", case.store, "--force", "--metric", "acc", "--metric", "bits_per_byte")
    r = cli(*args) if damage == "truncated" else run(*args)  # the case in a fresh process
    one_line_error(r, str(manifest))
    assert "scored 5 of 9 complete units" in r.stderr
    assert not any(k[0] == "ckpt-b" and k[1] == "wikitext2_docs" for k in case.result_values())
    case.unchanged(lambda p: is_derived(p) and unit.run_id not in p)


COMMANDS: dict[str, Callable[[Case], list[Any]]] = {
    "results": lambda c: ["results", "--store", c.store, "--format", "csv"],
    "compare": lambda c: ["compare", "--store", c.store, "--baseline", "ckpt-a", "--format", "csv"],
    "export tiers": lambda c: ["export", "tiers", c.root / "out", "--store", c.store],
    "export lm-eval": lambda c: ["export", "lm-eval", c.root / "out", "--store", c.store],
    "report": lambda c: ["report", c.root / "out.html", "--store", c.store],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_that_leaves_a_damaged_unit_out_names_it(case: Case, command: str) -> None:
    manifest = case.unit("ckpt-a", "arc_challenge").path / "manifest.json"
    os.truncate(manifest, 300)
    case.before = tree_hashes(case.root)
    r = run(*COMMANDS[command](case))
    one_line_error(r, str(manifest))  # named (export lm-eval stops at it: it reads the unit's task config)
    case.unchanged()


def test_status_lists_damaged_units_as_corrupt(case: Case) -> None:
    manifest = case.unit("ckpt-a", "gsm8k", 1).path / "manifest.json"
    manifest.write_text("{")
    gone = case.rows("ckpt-b", "arc_easy")
    gone.unlink()
    case.before = tree_hashes(case.root)
    r = run("status", "--store", case.store, "--json")
    assert r.exit_code == 0, r.output
    rows = {u["run_id"]: u for u in json.loads(r.stdout)["units"]}
    assert rows[case.unit("ckpt-a", "gsm8k", 1).run_id]["status"] == "corrupt"
    assert rows[case.unit("ckpt-b", "arc_easy").run_id]["status"] == "corrupt"
    assert str(gone) in rows[case.unit("ckpt-b", "arc_easy").run_id]["error"]
    case.unchanged()


# == gen: damaged units are reported and left as they are, the others run ====================================
def test_gen_does_not_call_a_unit_without_rows_complete(case: Case) -> None:
    unit = case.unit("ckpt-a", "arc_easy")
    unit.parquet_path.unlink()
    shutil.rmtree(case.unit("ckpt-b", "gsm8k", 1).path)  # one unit to generate
    case.before = tree_hashes(case.root)
    r = run("gen", case.suite, "--model", case.models, "--store", case.store, "--direct", "--no-progress")
    one_line_error(r, "1 damaged unit(s)", str(unit.parquet_path), "missing")
    assert "8 already complete, 1 damaged" in r.stdout, r.stdout
    assert (case.unit("ckpt-b", "gsm8k", 1).path / "rows.parquet").is_file()  # the other unit ran
    case.unchanged()


@pytest.mark.parametrize("damage", ["rows.jsonl line", "manifest"])
def test_one_damaged_partial_unit_does_not_stop_gen(case: Case, damage: str) -> None:
    partial = case.unit("ckpt-a", "gsm8k", 0)
    missing = case.unit("ckpt-b", "arc_challenge")
    shutil.rmtree(partial.path)
    shutil.rmtree(missing.path)
    r = run("gen", case.suite, "--model", case.models, "--store", case.store, "--direct", "--no-progress",
            "-t", "gsm8k", "--seeds", "0", "--fake-fail-after", "2", "--batch-size", "1")
    assert r.exit_code != 0 and (partial.path / "rows.jsonl").is_file()
    if damage == "rows.jsonl line":
        log = partial.path / "rows.jsonl"
        log.write_bytes(b"not json\n" + log.read_bytes())
        bad = f"{log}:1"
    else:
        bad = str(partial.path / "manifest.json")
        (partial.path / "manifest.json").write_text('{"status": "running"')
    case.before = tree_hashes(case.root)
    r = run("gen", case.suite, "--model", case.models, "--store", case.store, "--direct", "--no-progress")
    one_line_error(r, "1 damaged unit(s)", bad)
    assert (missing.path / "rows.parquet").is_file()  # the others ran
    assert not list(partial.path.glob("rows.parquet"))
    case.unchanged()


def test_gen_reports_swapped_rows_instead_of_skipping_them_as_complete(case: Case) -> None:
    a, b = case.unit("ckpt-b", "arc_easy"), case.unit("ckpt-b", "arc_challenge")
    swap(a.parquet_path, b.parquet_path)
    case.before = tree_hashes(case.root)
    r = cli("gen", case.suite, "--model", case.models, "--store", case.store, "--direct", "--no-progress")
    one_line_error(r, "2 damaged unit(s)", f"holds the rows of unit {b.run_id}")
    case.unchanged()


# == verify finds every one of them ==========================================================================
def _verify_cases(c: Case) -> dict[str, tuple[Callable[[], None], list[Path]]]:
    acc_norm, acc = c.score_file("ckpt-a", "arc_easy", "acc_norm"), c.score_file("ckpt-a", "arc_easy", "acc")
    gsm = [c.rows("ckpt-a", "gsm8k", 0), c.rows("ckpt-a", "gsm8k", 1)]
    manifest = c.unit("ckpt-a", "arc_easy").path / "manifest.json"
    return {
        "results flipped": (lambda: flip(c.results, c.results.stat().st_size // 2), [c.results]),
        "score file rotted": (lambda: rot(acc_norm, 150), [acc_norm]),
        "score file of another unit": (lambda: shutil.copyfile(c.score_file("ckpt-b", "arc_easy", "acc"), acc), [acc]),
        "rows swapped": (lambda: swap(*gsm), gsm),
        "rows footer garbled": (lambda: _garble_footer(c.rows("ckpt-b", "wikitext2_docs")),
                                [c.rows("ckpt-b", "wikitext2_docs")]),
        "rows deleted": (lambda: c.rows("ckpt-b", "gsm8k", 1).unlink(), [c.rows("ckpt-b", "gsm8k", 1)]),
        "manifest truncated": (lambda: os.truncate(manifest, 300), [manifest]),
    }


@pytest.mark.parametrize("damage", ["results flipped", "score file rotted", "score file of another unit",
                                    "rows swapped", "rows footer garbled", "rows deleted", "manifest truncated"])
def test_verify_finds_each_damaged_file(case: Case, damage: str) -> None:
    do, paths = _verify_cases(case)[damage]
    do()
    case.before = tree_hashes(case.root)
    r = run("verify", "--store", case.store, "--json")
    one_line_error(r, f"{len(paths)} problem(s)", str(paths[0]))
    found = [f for f in json.loads(r.stdout)["findings"] if f["kind"] in ("corrupt", "schema", "orphaned")]
    assert sorted(f["path"] for f in found) == sorted(map(str, paths)), found
    case.unchanged(lambda p: p.endswith("_index.json"))  # a damaged score file is dropped from its index


def test_backfill_lists_a_unit_without_rows_as_corrupt_and_leaves_it(case: Case) -> None:
    matrix = case.root / "matrix.yaml"
    matrix.write_text(f"name: adv\nbackend: fake\nprecision: fp32\nsuites: [{case.suite}]\n"
                      "stages:\n  - name: s1\n    path: 'fake/s1/step_{step}'\n    steps: [100]\n")
    store = case.root / "matrix-store"
    first = run("backfill", matrix, "--store", store, "--direct")
    assert first.exit_code == 0, first.output
    unit = sorted(Store(store).units(), key=lambda u: u.run_id)[0]
    unit.parquet_path.unlink()
    case.before = tree_hashes(case.root)
    listed = run("plan", matrix, "--store", store, "--direct", "--json")
    assert listed.exit_code == 0, listed.output
    states = {u["run_id"]: u["state"] for u in json.loads(listed.stdout)["units"]}
    assert states[unit.run_id] == "corrupt" and list(states.values()).count("complete") == 4
    r = run("backfill", matrix, "--store", store, "--direct")
    one_line_error(r, "1 damaged unit(s)", str(unit.parquet_path))
    case.unchanged()
