"""Writes where they must not, and processes that outlive their parent.

Every case runs the CLI as a user would, on a store made by the fake backend, and checks the exit code, a
one-line error without a traceback, and that every file that existed before (the store, the export, and the
files around them, link targets included) is byte-identical afterwards:

- names read from a store or an imported file never make a path outside the directory being written;
- no file of the store or of an export is written, truncated or replaced through a symbolic link;
- a full disk is an error that names the file, and leaves no lock behind; an empty lock blocks nothing;
- local backfill workers and scoring processes die with the command that started them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import assert_one_line_error, assert_unchanged, cli, invoke, tree_hashes

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LM_EVAL_RUN = Path(__file__).resolve().parent / "fixtures" / "lm_eval" / "v0.4.13" / "tinym"
LM_EVAL_DATE = "2026-11-23T17-37-05.332610"

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not found at {SHARED}")

SUITE = """
name: adv
data_root: {shared}
seeds: [0]
tasks:
  - name: arc_easy
    family: multiple_choice
    source: {{path: arc_easy/arc_easy.jsonl, split: test}}
    subset_size: 8
    params: {{prompt: arc, schema: llm_foundry}}
  - name: gsm8k_sampled
    family: gsm8k
    source: {{path: gsm8k/test.jsonl}}
    subset_size: 4
    gen: {{temperature: 0.7, n: 2, max_new_tokens: 16}}
"""


def one_error(proc: object, code: int, contains: str | None = None) -> str:
    """A failure with exit ``code``, no traceback, and exactly one ``error:`` line."""
    err = assert_one_line_error(proc, code, contains=contains)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def ok(proc: object) -> None:
    rc = getattr(proc, "returncode", getattr(proc, "exit_code", None))
    err = proc.stderr if isinstance(proc.stderr, str) else ""  # type: ignore[attr-defined]
    assert rc == 0 and "Traceback" not in err, err[-2000:]


def gen(store: Path, suite: Path, *extra: str) -> object:
    return invoke("gen", str(suite), "--model", "fake", "--name", "ckpt-a", "--step", "100", "--store", str(store),
                  "--no-progress", *extra)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scored store of one checkpoint (two units), and a store holding one partial unit."""
    d = tmp_path_factory.mktemp("adv")
    suite = d / "suite.yaml"
    suite.write_text(SUITE.format(shared=SHARED))
    ok(gen(d / "store", suite))
    ok(invoke("score", "--store", str(d / "store")))
    r = gen(d / "partial", suite, "-t", "arc_easy", "--fake-fail-after", "3")
    assert r.exit_code == 1 and "injected failure" in r.stderr, r.stderr
    return d


@pytest.fixture
def ws(built: Path, tmp_path: Path) -> Path:
    """A copy of the built stores, with a directory ``outside`` of files no command may touch."""
    for name in ("store", "partial"):
        shutil.copytree(built / name, tmp_path / name, symlinks=True)
    shutil.copy(built / "suite.yaml", tmp_path / "suite.yaml")
    out = tmp_path / "outside"
    out.mkdir()
    (out / "victim.txt").write_text("precious\n")
    return tmp_path


def unit_dir(store: Path, task: str) -> Path:
    for m in sorted(store.glob("gen/*/manifest.json")):
        if json.loads(m.read_bytes())["task"]["name"] == task:
            return m.parent
    raise AssertionError(f"no {task} unit in {store}")


def link_away(path: Path, outside: Path) -> Path:
    """Move ``path`` (file or directory) to ``outside`` and leave a symbolic link to it in its place."""
    target = outside / ("moved-" + path.name)
    shutil.move(str(path), str(target))
    path.symlink_to(target, target_is_directory=target.is_dir())
    return target


def new_files(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return set(after) - set(before)


# -- names from the store never leave the directory they are joined to ------------------------------------------
EVIL_NAMES = ["../../../../x/EVIL", "../..", "/etc/cron.d/evil", "a/./../../../b", "..\\..\\win", "nul\x00byte", ""]


@pytest.mark.parametrize("name", EVIL_NAMES, ids=["dotdot-deep", "dotdot", "absolute", "mixed", "backslash", "nul",
                                                  "empty"])
def test_export_lm_eval_keeps_a_stored_model_name_inside_out(ws: Path, name: str) -> None:
    store = ws / "store"
    for m in store.glob("gen/*/manifest.json"):
        doc = json.loads(m.read_bytes())
        doc["model"]["name"] = name  # what a copied or hand-edited manifest may hold
        m.write_bytes(json.dumps(doc).encode())
    ok(invoke("score", "--store", str(store)))
    out = ws / "a" / "b" / "c" / "out"
    before = tree_hashes(ws)
    r = invoke("export", "lm-eval", str(out), "--store", str(store))
    ok(r)
    after = tree_hashes(ws)
    assert_unchanged(before, after)
    made = new_files(before, after)
    assert made and all(Path(p).is_relative_to(out) for p in made), sorted(made)
    (res,) = [Path(p) for p in made]
    assert res.name == "results.json" and res.parent.parent == out
    assert json.loads(res.read_bytes())["model_name_sanitized"] == res.parent.name


def test_two_model_names_that_sanitise_alike_get_two_directories(ws: Path) -> None:
    store = ws / "store"
    for i, m in enumerate(sorted(store.glob("gen/*/manifest.json"))):
        doc = json.loads(m.read_bytes())
        doc["model"]["name"] = ["../EVIL", "/evil"][i]
        doc["model"]["path"] = f"/ckpt/{i}"  # two checkpoints
        m.write_bytes(json.dumps(doc).encode())
    ok(invoke("score", "--store", str(store)))
    r = invoke("export", "lm-eval", str(ws / "out"), "--store", str(store))
    ok(r)
    assert sorted(p.parent.name for p in (ws / "out").rglob("results.json")) == ["evil", "evil-2"]


def test_import_lm_eval_refuses_a_task_name_that_leaves_the_run_directory(ws: Path) -> None:
    run = ws / "run"
    shutil.copytree(LM_EVAL_RUN, run)
    res = next(run.glob("results_*.json"))
    doc = json.loads(res.read_bytes())
    doc["configs"]["../../x"] = doc["configs"].pop("arc_easy_local")
    res.write_text(json.dumps(doc))
    # the samples file the name would reach: <run>/samples_../../../x_<date>.jsonl == <ws>/x_<date>.jsonl
    (run / "samples_..").mkdir()
    shutil.copy(run / f"samples_arc_easy_local_{LM_EVAL_DATE}.jsonl", ws / f"x_{LM_EVAL_DATE}.jsonl")
    before = tree_hashes(ws)
    r = invoke("import", "lm-eval", str(run), "--store", str(ws / "new-store"))
    line = one_error(r, 1, contains="'../../x'")
    assert str(res) in line
    assert_unchanged(before, tree_hashes(ws))
    assert not (ws / "new-store" / "gen").exists()


def test_import_jsonl_refuses_a_model_name_with_a_path(ws: Path) -> None:
    data = ws / "gen.jsonl"
    data.write_text(json.dumps({"id": 1, "cands": ["4"], "answer": "4"}) + "\n")
    mapping = ws / "map.yaml"
    mapping.write_text(textwrap.dedent("""
        task: gsm8k_bon
        model: {name: ../../outside/evil, path: /ckpt/x}
        seed: 0
        gen: {temperature: 0.8, n: 1}
        fields: {sample_id: id, candidates: cands, target: answer}
    """))
    before = tree_hashes(ws)
    r = invoke("import", "jsonl", str(data), "--map", str(mapping), "--store", str(ws / "store"))
    one_error(r, 2, contains="../../outside/evil")
    assert_unchanged(before, tree_hashes(ws))
    assert set(tree_hashes(ws)) == set(before)


def test_gen_refuses_a_model_label_with_a_path(ws: Path) -> None:
    before = tree_hashes(ws)
    r = invoke("gen", str(ws / "suite.yaml"), "--model", "fake", "--name", "../outside/evil", "--store",
               str(ws / "store"), "--no-progress")
    one_error(r, 2, contains="../outside/evil")
    assert set(tree_hashes(ws)) == set(before)


# -- no file of the store is written, truncated or replaced through a symbolic link -----------------------------
def _partial_unit(ws: Path) -> Path:
    return unit_dir(ws / "partial", "arc_easy")


def _torn_rows_link(ws: Path) -> None:
    u = _partial_unit(ws)
    target = link_away(u / "rows.jsonl", ws / "outside")
    with open(target, "ab") as f:
        f.write(b'{"sample_id": "torn')  # a torn last line: resume would cut it off the file it reaches


def _manifest_link(ws: Path) -> None:
    link_away(_partial_unit(ws) / "manifest.json", ws / "outside")


def _lock_link(ws: Path) -> None:
    (_partial_unit(ws) / ".lock").symlink_to(ws / "outside" / "victim.txt")


def _parquet_link(ws: Path) -> None:
    (_partial_unit(ws) / "rows.parquet").symlink_to(ws / "outside" / "victim.txt")


def _unit_dir_link(ws: Path) -> None:
    link_away(_partial_unit(ws), ws / "outside")


def _gen_dir_link(ws: Path) -> None:
    link_away(ws / "partial" / "gen", ws / "outside")


GEN_LINKS: dict[str, Callable[[Path], None]] = {
    "rows.jsonl with a torn line": _torn_rows_link, "manifest.json": _manifest_link, ".lock": _lock_link,
    "rows.parquet": _parquet_link, "unit directory": _unit_dir_link, "gen directory": _gen_dir_link,
}


@pytest.mark.parametrize("how", list(GEN_LINKS))
def test_gen_never_writes_through_a_symlink_in_the_store(ws: Path, how: str) -> None:
    GEN_LINKS[how](ws)
    before = tree_hashes(ws)
    r = gen(ws / "partial", ws / "suite.yaml", "-t", "arc_easy")
    line = one_error(r, 1)
    assert "symbolic link" in line or "outside the store" in line, line
    assert_unchanged(before, tree_hashes(ws))


def _scores_unit_link(ws: Path) -> None:
    link_away(ws / "store" / "scores" / unit_dir(ws / "store", "arc_easy").name, ws / "outside")


def _scores_dir_link(ws: Path) -> None:
    link_away(ws / "store" / "scores", ws / "outside")


def _score_file_link(ws: Path) -> None:
    d = ws / "store" / "scores" / unit_dir(ws / "store", "arc_easy").name
    (d / "_index.json").unlink()
    acc = next(d.glob("acc@*.arrow"))
    acc.unlink()  # a missing score, so `score` computes it: into the link, if it followed it
    acc.symlink_to(ws / "outside" / "victim.txt")


def _results_link(ws: Path) -> None:
    link_away(ws / "store" / "results.parquet", ws / "outside")


def _index_link(ws: Path) -> None:
    d = ws / "store" / "scores" / unit_dir(ws / "store", "arc_easy").name
    (d / "_index.json").unlink()
    (d / "_index.json").symlink_to(ws / "outside" / "victim.txt")  # unreadable as an index: rewritten


SCORE_LINKS: dict[str, Callable[[Path], None]] = {
    "scores/<run_id>": _scores_unit_link, "scores": _scores_dir_link, "a score file": _score_file_link,
    "results.parquet": _results_link, "_index.json": _index_link,
}


@pytest.mark.parametrize("how", list(SCORE_LINKS))
def test_score_never_writes_through_a_symlink_in_the_store(ws: Path, how: str) -> None:
    SCORE_LINKS[how](ws)
    before = tree_hashes(ws)
    args = ["score", "--store", str(ws / "store")]
    if how in ("scores/<run_id>", "scores"):
        args.append("--force")  # every score is written again
    line = one_error(invoke(*args), 1, contains="symbolic link")
    assert "replace the link" in line
    assert_unchanged(before, tree_hashes(ws))


def test_prepare_never_writes_through_a_symlinked_data_directory(ws: Path) -> None:
    store = ws / "store"
    ok(invoke("prepare", str(ws / "suite.yaml"), "--store", str(store), "-t", "arc_easy"))
    link_away(store / "data" / "arc_easy", ws / "outside")
    before = tree_hashes(ws)
    r = invoke("prepare", str(ws / "suite.yaml"), "--store", str(store), "-t", "arc_easy", "--force")
    one_error(r, 1, contains="symbolic link")
    assert_unchanged(before, tree_hashes(ws))


@pytest.mark.parametrize("where", ["by_checkpoint", "by_checkpoint/step_100", "by_checkpoint/step_100/tier3_cf.json"])
def test_export_tiers_never_writes_through_a_symlink_below_out(ws: Path, where: str) -> None:
    out = ws / "out"
    ok(invoke("export", "tiers", str(out), "--store", str(ws / "store")))
    link_away(out / where, ws / "outside")
    before = tree_hashes(ws)
    r = invoke("export", "tiers", str(out), "--store", str(ws / "store"))
    one_error(r, 1, contains="symbolic link")
    assert_unchanged(before, tree_hashes(ws))


@pytest.mark.parametrize("where", ["ckpt-a", "ckpt-a/results.json"])
def test_export_lm_eval_never_writes_through_a_symlink_below_out(ws: Path, where: str) -> None:
    out = ws / "out"
    ok(invoke("export", "lm-eval", str(out), "--store", str(ws / "store")))
    link_away(out / where, ws / "outside")
    before = tree_hashes(ws)
    one_error(invoke("export", "lm-eval", str(out), "--store", str(ws / "store")), 1, contains="symbolic link")
    assert_unchanged(before, tree_hashes(ws))


def test_report_refuses_to_replace_a_symlinked_output(ws: Path) -> None:
    page = ws / "report.html"
    page.symlink_to(ws / "outside" / "victim.txt")
    before = tree_hashes(ws)
    one_error(invoke("report", str(page), "--store", str(ws / "store")), 1, contains="symbolic link")
    assert_unchanged(before, tree_hashes(ws))


# -- a full disk, and the locks it may leave ----------------------------------------------------------------
def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def no_space_for(monkeypatch: pytest.MonkeyPatch, func: str, match: Callable[[str], bool]) -> None:
    """Make ``os.<func>(fd, ...)`` fail with ENOSPC for the files whose path ``match`` accepts."""
    real = getattr(os, func)

    def full(fd: int, *a: object) -> object:
        if match(_fd_path(fd)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, *a)

    monkeypatch.setattr(os, func, full)


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")


@needs_proc
@pytest.mark.parametrize("hard_links", [True, False], ids=["linked-into-place", "no-hard-links"])
def test_a_full_disk_while_taking_the_lock_leaves_no_lock(ws: Path, monkeypatch: pytest.MonkeyPatch,
                                                          hard_links: bool) -> None:
    u = _partial_unit(ws)
    before = tree_hashes(ws)
    with monkeypatch.context() as m:
        no_space_for(m, "write", lambda p: "/.lock" in p)
        if not hard_links:  # a filesystem without them: the lock is created in place, then written
            def no_link(*a: object, **k: object) -> None:
                raise OSError(errno.EPERM, os.strerror(errno.EPERM))

            m.setattr(os, "link", no_link)
        r = gen(ws / "partial", ws / "suite.yaml", "-t", "arc_easy")
    line = one_error(r, 1, contains="no space left")
    assert str(u / ".lock") in line and "free space" in line
    assert not list(u.glob(".lock*")), "a lock (or its temporary file) was left behind"
    assert_unchanged(before, tree_hashes(ws))
    ok(gen(ws / "partial", ws / "suite.yaml", "-t", "arc_easy"))  # the next run is not blocked
    assert json.loads((u / "manifest.json").read_bytes())["status"] == "complete"


@needs_proc
def test_a_full_disk_while_appending_rows_names_the_file_and_resumes(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    u = _partial_unit(ws)
    with monkeypatch.context() as m:
        no_space_for(m, "fsync", lambda p: p.endswith("/rows.jsonl"))
        r = gen(ws / "partial", ws / "suite.yaml", "-t", "arc_easy")
    line = one_error(r, 1, contains="no space left")
    assert str(u / "rows.jsonl") in line and "resumes" in line
    assert not (u / ".lock").exists()
    ok(gen(ws / "partial", ws / "suite.yaml", "-t", "arc_easy"))
    assert json.loads((u / "manifest.json").read_bytes())["status"] == "complete"


@needs_proc
@pytest.mark.parametrize("target", ["results.parquet", "export"])
def test_a_full_disk_during_an_atomic_write_changes_nothing(ws: Path, monkeypatch: pytest.MonkeyPatch,
                                                            target: str) -> None:
    store, out = ws / "store", ws / "out"
    ok(invoke("export", "tiers", str(out), "--store", str(store)))
    before = tree_hashes(ws)
    with monkeypatch.context() as m:
        if target == "results.parquet":
            no_space_for(m, "fsync", lambda p: ".results.parquet." in p)
            r = invoke("score", "--store", str(store))
            path = store / "results.parquet"
        else:
            no_space_for(m, "fsync", lambda p: ".tier3_cf.json." in p)
            r = invoke("export", "tiers", str(out), "--store", str(store))
            path = out / "by_checkpoint" / "step_100" / "tier3_cf.json"
    line = one_error(r, 1, contains="no space left")
    assert str(path) in line and "free space" in line
    after = tree_hashes(ws)
    assert_unchanged(before, after)
    assert not [p for p in new_files(before, after) if p.endswith(".tmp")], "a temporary file was left behind"


@pytest.mark.parametrize("content,age_s", [(b"", 3600), (b'{"pid": nu', 3600), (b'{"pid": null, "host": null}', 3600),
                                           (b"", 0)], ids=["empty", "torn", "no-owner", "empty-fresh"])
def test_an_empty_or_unreadable_lock_blocks_nothing(ws: Path, content: bytes, age_s: int) -> None:
    u = _partial_unit(ws)
    lock = u / ".lock"
    lock.write_bytes(content)  # left by a run that could not write it (a full disk), or by an older version
    if age_s:
        t = time.time() - age_s
        os.utime(lock, (t, t))
    r = cli("gen", ws / "suite.yaml", "--model", "fake", "--name", "ckpt-a", "--step", "100", "--store",
            ws / "partial", "-t", "arc_easy", "--no-progress", timeout=120)
    ok(r)
    assert "pid None" not in r.stderr
    assert f"warning: {lock}: took over an empty or unreadable lock" in r.stderr, r.stderr
    assert not lock.exists() and json.loads((u / "manifest.json").read_bytes())["status"] == "complete"


# -- worker processes die with the command that started them ----------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"  # a zombie is dead, only not yet reaped
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid and fields[0] != b"Z":
                out.append(int(d.name))
    return out


def _wait_for(cond: Callable[[], object], what: str, timeout: float = 90) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _assert_all_die(pids: list[int]) -> None:
    try:
        _wait_for(lambda: not any(_alive(p) for p in pids), "the workers to die after their parent", timeout=60)
    finally:
        for p in pids:  # never leave a process of a failed test running
            if _alive(p):
                os.kill(p, signal.SIGKILL)


MATRIX = """
name: m
backend: fake
precision: fp32
suites: [{suite}]
model: {{options: {{rows_per_s: 0.05}}}}  # 20 s a row: the workers would run for minutes
stages:
  - name: s1
    path: fake/s1/step_{{step}}
    steps: [1, 2]
"""

needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker pids from /proc")


def _start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``rescore ARGS`` with its output in ``log`` (a file: workers that outlive it cannot hold a pipe open)."""
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", "rescore.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})


def _stop_parent(proc: subprocess.Popen[bytes], sig: signal.Signals, log: Path) -> str:
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return log.read_text(errors="replace")


@needs_linux
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_backfill_workers_die_with_their_parent(ws: Path, sig: signal.Signals) -> None:
    matrix = ws / "matrix.yaml"
    matrix.write_text(MATRIX.format(suite=ws / "suite.yaml"))
    store = ws / "bf"
    log = ws / "backfill.log"
    proc = _start(["backfill", str(matrix), "--store", str(store), "--max-parallel", "2"], log)
    workers: list[int] = []
    try:
        # both workers hold a unit's lock: they are generating
        _wait_for(lambda: len(list(store.glob("gen/*/.lock"))) >= 2, "two workers to start generating")
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        err = _stop_parent(proc, sig, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        _assert_all_die(workers)
    if sig == signal.SIGTERM:  # passed on: the workers end their batch and release their locks
        assert proc.returncode == 143 and "Traceback" not in err, err
        assert not list(store.glob("gen/*/.lock")), "a worker left its lock"
    else:
        assert proc.returncode == -signal.SIGKILL


SLOW_PLUGIN = '''
import os
import time
from pathlib import Path

from rescore.score import metric


def _slow(table):
    Path(os.environ["RESCORE_TEST_MARKS"], str(os.getpid())).write_text("")
    time.sleep(600)
    return [1.0] * table.num_rows


zz_slow_ll = metric(version=1, request_type="loglikelihood", columns=["gold"], name="zz_slow_ll")(_slow)
zz_slow_gen = metric(version=1, request_type="generate", columns=["candidates"], name="zz_slow_gen")(_slow)
'''


@needs_linux
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_scoring_workers_die_with_their_parent(ws: Path, sig: signal.Signals) -> None:
    plugin = ws / "slow.py"
    plugin.write_text(SLOW_PLUGIN)
    marks = ws / "marks"
    marks.mkdir()
    log = ws / "score.log"
    proc = _start(["score", "--store", str(ws / "store"), "--plugin", str(plugin), "--jobs", "2", "--no-progress"],
                  log, env={"RESCORE_TEST_MARKS": str(marks)})
    workers: list[int] = []
    try:
        _wait_for(lambda: len(list(marks.iterdir())) >= 2, "both workers inside the slow metric")
        workers = [int(p.name) for p in marks.iterdir()]
        err = _stop_parent(proc, sig, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        _assert_all_die(workers)
    assert proc.returncode == (143 if sig == signal.SIGTERM else -signal.SIGKILL), err


@needs_linux
def test_a_worker_whose_parent_is_already_gone_stops_at_once(ws: Path) -> None:
    r = cli("status", "--store", ws / "store", env={"RESCORE_PARENT_PID": "1"}, timeout=120)  # pid 1 is not its parent
    assert r.returncode == 128 + signal.SIGTERM and "Traceback" not in r.stderr, r.stderr
    assert "has ended; stopping" in r.stderr and not r.stdout


WATCHED_CHILD = """
import os, sys, time
from rescore import children
children._pdeathsig = lambda sig: False  # as where prctl is missing: the watchdog thread alone
children.die_with_parent(int(sys.argv[1]), poll_s=0.1)
open(sys.argv[2], "w").write(str(os.getpid()))
time.sleep(600)
"""

MIDDLE = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], str(__import__("os").getpid()), sys.argv[2]])
time.sleep(600)
"""


@needs_linux
def test_without_prctl_the_watchdog_ends_a_child_whose_parent_died(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    middle = subprocess.Popen([sys.executable, "-c", MIDDLE, WATCHED_CHILD, str(pid_file)])
    child: list[int] = []
    try:
        _wait_for(lambda: pid_file.is_file() and pid_file.read_text(), "the watched child to start")
        child = [int(pid_file.read_text())]
        assert _alive(child[0])
        middle.kill()
        middle.wait()
    finally:
        if middle.poll() is None:
            middle.kill()
        _assert_all_die(child)
