"""The artifact store: crash-safe appends, torn lines, corrupt files, locks, path safety."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import orjson
import pyarrow.parquet as pq
import pytest

from rescore.artifacts.io import atomic_write_json, safe_join
from rescore.artifacts.lock import UnitLock
from rescore.artifacts.schema import SCHEMA_VERSION, schema_for
from rescore.artifacts.store import Store, TornLineWarning, UnitWriter
from rescore.config import ModelConfig
from rescore.core import Request
from rescore.errors import ConfigError, CorruptArtifactError, LockedError, StoreError
from rescore.gen.base import RunContext
from rescore.gen.fake import FakeBackend
from rescore.registry import check_name


def mc_requests(n: int) -> list[Request]:
    return [
        Request(sample_id=f"{i:05d}", task="toy", request_type="loglikelihood", gold=i % 3,
                contexts=(f"Question {i}?",) * 3, continuations=(" yes", " no", " maybe"))
        for i in range(n)
    ]


def fake_rows(reqs: list[Request], batch_size: int = 4) -> list[list[dict]]:
    b = FakeBackend(ModelConfig(name="f", path="fake", backend="fake"))
    return list(b.run(reqs, RunContext(seed=0, batch_size=batch_size)))


def manifest() -> dict:
    return {"request_type": "loglikelihood", "task": {"name": "toy"}, "model": {"name": "f"}}


def write_unit(store: Store, run_id: str, reqs: list[Request], *, finish: bool = True) -> UnitWriter:
    with UnitWriter(store, run_id, manifest()) as w:
        for batch in fake_rows(reqs):
            w.append(batch)
        if finish:
            w.finish([r.sample_id for r in reqs])
    return w


def test_roundtrip_writes_parquet_with_schema_and_checksum(tmp_path):
    store = Store(tmp_path)
    reqs = mc_requests(10)
    write_unit(store, "abc123", reqs)
    unit = store.unit("abc123")
    assert unit.complete and unit.rows_done() == 10
    table = unit.read_table()
    assert table.schema.equals(schema_for("loglikelihood"), check_metadata=False)
    assert table.column("sample_id").to_pylist() == [r.sample_id for r in reqs]
    assert unit.manifest["schema_version"] == SCHEMA_VERSION
    assert not (unit.path / "rows.jsonl").exists()
    assert pq.read_metadata(unit.parquet_path).num_rows == 10


def test_resume_skips_done_rows(tmp_path):
    store = Store(tmp_path)
    reqs = mc_requests(12)
    with UnitWriter(store, "aa", manifest()) as w:
        w.append([r for b in fake_rows(reqs[:6]) for r in b])
    with UnitWriter(store, "aa", manifest()) as w:
        assert w.done_ids == {r.sample_id for r in reqs[:6]}
        assert w.manifest["resumes"] == 1
        for b in fake_rows([r for r in reqs if r.sample_id not in w.done_ids]):
            w.append(b)
        w.finish([r.sample_id for r in reqs])
    whole = Store(tmp_path / "other")
    write_unit(whole, "aa", reqs)
    assert store.unit("aa").read_table().equals(whole.unit("aa").read_table())


def test_torn_last_line_is_dropped_with_warning(tmp_path):
    store = Store(tmp_path)
    reqs = mc_requests(6)
    write_unit(store, "bb", reqs, finish=False)
    jsonl = tmp_path / "gen" / "bb" / "rows.jsonl"
    good = jsonl.read_bytes()
    jsonl.write_bytes(good + b'{"sample_id": "00099", "task": "to')  # a kill mid-write
    with pytest.warns(TornLineWarning, match="torn last line"):
        with UnitWriter(store, "bb", manifest()) as w:
            assert w.done_ids == {r.sample_id for r in reqs}
    assert jsonl.read_bytes() == good


def test_malformed_middle_line_is_an_error_and_nothing_is_overwritten(tmp_path):
    store = Store(tmp_path)
    write_unit(store, "cc", mc_requests(6), finish=False)
    jsonl = tmp_path / "gen" / "cc" / "rows.jsonl"
    lines = jsonl.read_bytes().splitlines(keepends=True)
    lines[2] = b"{not json\n"
    broken = b"".join(lines)
    jsonl.write_bytes(broken)
    with pytest.raises(CorruptArtifactError, match=r"rows\.jsonl:3: malformed row"):
        with UnitWriter(store, "cc", manifest()):
            pass
    assert jsonl.read_bytes() == broken
    assert not (tmp_path / "gen" / "cc" / ".lock").exists()


def test_second_writer_is_refused(tmp_path):
    store = Store(tmp_path)
    with UnitWriter(store, "dd", manifest()):
        with pytest.raises(LockedError, match=r"being written by pid \d+"):
            with UnitWriter(store, "dd", manifest()):
                pass
    with UnitWriter(store, "dd", manifest()):  # released: a new writer may take it
        pass


def test_stale_lock_of_dead_pid_is_reclaimed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    lock = tmp_path / "gen" / "ee" / ".lock"
    lock.parent.mkdir(parents=True)
    import socket

    lock.write_bytes(orjson.dumps({"pid": proc.pid, "host": socket.gethostname()}))
    store = Store(tmp_path)
    with UnitWriter(store, "ee", manifest()) as w:
        assert w.lock.held
    assert not lock.exists()


def test_live_lock_of_other_process_is_kept(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # killed below
    try:
        lock = UnitLock(tmp_path / ".lock", "unit x")
        import socket

        (tmp_path / ".lock").write_bytes(orjson.dumps({"pid": proc.pid, "host": socket.gethostname()}))
        with pytest.raises(LockedError, match=str(proc.pid)):
            lock.acquire()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_parquet_is_reported_with_its_path(tmp_path, damage):
    store = Store(tmp_path)
    write_unit(store, "ff", mc_requests(30))
    p = tmp_path / "gen" / "ff" / "rows.parquet"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"x" * len(data))
    with pytest.raises(CorruptArtifactError, match=str(p)):
        Store(tmp_path).unit("ff").read_table()
    # even without the checksum, a damaged file is never read as partial data
    with pytest.raises(CorruptArtifactError, match=str(p)):
        Store(tmp_path).unit("ff").read_table(verify=False)


def test_flipped_byte_in_the_middle_is_caught_on_read(tmp_path):
    store = Store(tmp_path)
    write_unit(store, "fa", mc_requests(300))
    p = tmp_path / "gen" / "fa" / "rows.parquet"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, structure intact: only the page checksum can tell
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match=str(p)):
        Store(tmp_path).unit("fa").read_table()
    from rescore.verify import check_unit

    assert [f.kind for f in check_unit(tmp_path / "gen" / "fa")] == ["corrupt"]


def test_missing_parquet_of_complete_unit_is_an_error(tmp_path):
    store = Store(tmp_path)
    write_unit(store, "ab", mc_requests(3))
    (tmp_path / "gen" / "ab" / "rows.parquet").unlink()
    with pytest.raises(CorruptArtifactError, match="missing"):
        store.unit("ab").read_table()


def test_finish_refuses_rows_that_do_not_match_requests(tmp_path):
    store = Store(tmp_path)
    reqs = mc_requests(4)
    with UnitWriter(store, "ac", manifest()) as w:
        w.append([r for b in fake_rows(reqs[:3]) for r in b])
        with pytest.raises(StoreError, match="missing"):
            w.finish([r.sample_id for r in reqs])
    assert store.unit("ac").status == "running"


def test_unknown_columns_from_a_backend_are_refused(tmp_path):
    with UnitWriter(Store(tmp_path), "ad", manifest()) as w:
        with pytest.raises(StoreError, match="unknown columns"):
            w.append([{"sample_id": "1", "task": "t", "request_type": "loglikelihood", "bogus": 1}])


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", "Upper", "/abs", "a\x00b"])
def test_names_that_reach_the_filesystem_are_checked(tmp_path, bad):
    with pytest.raises(ConfigError):
        check_name(bad)
    if bad and "/" not in bad and bad not in ("..",):
        return
    with pytest.raises(StoreError):
        safe_join(tmp_path, bad)


def test_safe_join_refuses_symlink_escape(tmp_path):
    (tmp_path / "store").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, tmp_path / "store" / "link")
    with pytest.raises(StoreError, match="outside the store"):
        safe_join(tmp_path / "store", "link")


def test_unit_lookup_by_prefix_and_bad_ids(tmp_path):
    store = Store(tmp_path)
    write_unit(store, "abcdef01", mc_requests(2))
    assert store.unit("abcd").run_id == "abcdef01"
    with pytest.raises(StoreError, match="invalid run id"):
        store.unit("../../etc")
    with pytest.raises(StoreError, match="no unit"):
        store.unit("ffff")


def test_fake_backend_is_deterministic_across_batch_sizes(tmp_path):
    reqs = mc_requests(9)
    a = [r for b in fake_rows(reqs, 1) for r in b]
    b = [r for b in fake_rows(list(reversed(reqs)), 4) for r in b]
    dump = lambda rows: [orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) for r in sorted(rows, key=lambda r: r["sample_id"])]  # noqa: E731
    assert dump(a) == dump(b)


def test_manifest_json_is_atomic(tmp_path):
    p = tmp_path / "m.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_json(p, {"a": 2})
    assert orjson.loads(p.read_bytes()) == {"a": 2}
    assert [x.name for x in tmp_path.iterdir()] == ["m.json"]


def test_warnings_not_raised_on_clean_resume(tmp_path):
    store = Store(tmp_path)
    write_unit(store, "ba", mc_requests(3), finish=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with UnitWriter(store, "ba", manifest()) as w:
            assert len(w.done_ids) == 3


def test_non_finite_values_are_null_whether_or_not_the_unit_was_resumed(tmp_path):
    reqs = mc_requests(4)
    rows = [r for b in fake_rows(reqs) for r in b]
    rows[1]["choice_sum_logprob"] = [float("-inf"), 0.5, float("nan")]
    rows[2]["choice_logprobs"] = [[float("-inf")], [-1.0], [-2.0]]

    whole = Store(tmp_path / "a")
    with UnitWriter(whole, "aa", manifest()) as w:
        w.append(rows)
        w.finish([r.sample_id for r in reqs])
    resumed = Store(tmp_path / "b")
    with UnitWriter(resumed, "aa", manifest()) as w:
        w.append(rows[:2])
    with UnitWriter(resumed, "aa", manifest()) as w:
        w.append(rows[2:])
        w.finish([r.sample_id for r in reqs])
    a, b = whole.unit("aa").read_table(), resumed.unit("aa").read_table()
    assert a.equals(b)
    assert a.column("choice_sum_logprob")[1].as_py() == [None, 0.5, None]
    assert a.column("choice_logprobs")[2].as_py()[0] == [None]


def test_lock_of_another_host_is_stale_only_after_it_stops_being_refreshed(tmp_path):
    import time as _time

    from rescore.artifacts import lock as lockmod

    path = tmp_path / ".lock"
    path.write_bytes(orjson.dumps({"pid": 1, "host": "some-other-node", "token": "x"}))
    with pytest.raises(LockedError):
        UnitLock(path, "unit").acquire()
    old = _time.time() - lockmod.STALE_AFTER_S - 5
    os.utime(path, (old, old))  # a job killed on that node long ago
    lk = UnitLock(path, "unit")
    lk.acquire()
    assert orjson.loads(path.read_bytes())["token"] == lk.token
    lk.release()
    assert not path.exists()


def test_release_never_removes_a_lock_that_is_not_ours(tmp_path):
    path = tmp_path / ".lock"
    lk = UnitLock(path, "unit")
    lk.acquire()
    path.write_bytes(orjson.dumps({"pid": 2, "host": "h", "token": "someone-else"}))  # taken over meanwhile
    lk.release()
    assert path.exists()


def test_concurrent_takeover_of_a_stale_lock_has_one_winner(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    path = tmp_path / ".lock"
    path.write_bytes(orjson.dumps({"pid": dead.pid, "host": socket.gethostname(), "token": "dead"}))
    code = (
        "import sys, time; from pathlib import Path; from rescore.artifacts.lock import UnitLock\n"
        "from rescore.errors import LockedError\n"
        f"lk = UnitLock(Path({str(path)!r}), 'u')\n"
        "try:\n    lk.acquire(); print('won', flush=True); sys.stdin.read()\n"  # holds the lock until told
        "except LockedError:\n    print('lost', flush=True)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.stdout.readline().strip() for p in procs]  # every process has tried before the winner lets go
    for p in procs:
        p.communicate("")
    assert sorted(outs) == ["lost", "lost", "lost", "won"], outs


def test_store_files_are_readable_by_the_group(tmp_path):
    write_unit(Store(tmp_path), "ab12", mc_requests(2))
    for name in ("manifest.json", "rows.parquet"):
        mode = (tmp_path / "gen" / "ab12" / name).stat().st_mode & 0o777
        assert mode & 0o044 == 0o044 & ~os.umask(os.umask(0)), oct(mode)


def test_a_store_path_that_is_a_file_is_a_one_line_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "afile"
    f.write_text("not a store")
    for cmd in (["score"], ["status"], ["ls"], ["results"]):
        r = subprocess.run([sys.executable, "-m", "rescore.cli", *cmd, "--store", str(f)], capture_output=True, text=True)
        assert r.returncode != 0 and "is a file, not a store directory" in r.stderr and "Traceback" not in r.stderr, cmd
    assert f.read_text() == "not a store"
