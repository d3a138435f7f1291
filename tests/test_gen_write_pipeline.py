"""`gen` writes a batch of rows (and its side files) while the backend computes the next one, and keeps the
guarantees of writing them in line: every batch the backend handed over is on disk when the run stops, a
failed write stops the run with its own error, and a resumed unit equals an uninterrupted one."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from support import ARC_EASY, write_suite

from rescore.artifacts.store import Store, UnitWriter
from rescore.config import ModelConfig
from rescore.errors import StoreError
from rescore.gen.base import make_backend
from rescore.gen.runner import plan_units, run_units
from rescore.tasks.suites import load_suite

BATCH = 4
ROWS = 14  # four batches: 4, 4, 4, 2


def plans_for(store: Store, suite_file: Path, shared_data: Path) -> list[Any]:
    model = ModelConfig(name="fake", path="fake", backend="fake", batch_size=BATCH)
    return plan_units(store, load_suite(str(suite_file)), [model], data_root=shared_data)


@pytest.fixture()
def suite_file(tmp_path: Path, shared_data: Path) -> Path:
    return write_suite(tmp_path / "s.yaml", shared_data, [{**ARC_EASY, "subset_size": ROWS}])


@pytest.fixture()
def setup(tmp_path: Path, suite_file: Path, shared_data: Path) -> tuple[Store, list[Any]]:
    store = Store(tmp_path / "store")
    return store, plans_for(store, suite_file, shared_data)


def factory(on_batch: Any) -> Any:
    """A fake backend that calls ``on_batch(i)`` when it starts computing batch ``i`` (i >= 1)."""

    def make(cfg: ModelConfig) -> Any:
        b = make_backend(cfg)
        run = b.run

        def hooked(requests: Any, ctx: Any) -> Any:
            for i, rows in enumerate(run(requests, ctx)):
                if i:
                    on_batch(i)
                yield rows

        b.run = hooked  # type: ignore[method-assign]
        return b

    return make


def rows_on_disk(store: Store) -> int:
    (u,) = store.units()
    return u.rows_done()


def test_a_batch_is_written_while_the_next_one_is_computed(setup: tuple[Store, list[Any]],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store, plans = setup
    computing = threading.Event()
    overlapped: list[bool] = []
    real_append = UnitWriter.append

    def append(self: UnitWriter, rows: Any) -> int:
        # the first batch's write waits until the backend is computing the second batch: only a write that runs
        # beside the computation gets there (a write in line with it would wait for ever; the guard ends that)
        if not overlapped:
            overlapped.append(computing.wait(timeout=60))
        return real_append(self, rows)

    monkeypatch.setattr(UnitWriter, "append", append)
    (res,) = run_units(store, plans, backend_factory=factory(lambda i: computing.set()))
    assert overlapped == [True]
    assert res.action == "generated" and res.rows_written == ROWS
    assert store.units()[0].complete


class Stop(Exception):
    pass


def test_every_batch_handed_over_is_on_disk_when_the_backend_fails(setup: tuple[Store, list[Any]]) -> None:
    store, plans = setup

    def fail(i: int) -> None:
        if i == 3:
            raise Stop

    with pytest.raises(Stop):
        run_units(store, plans, backend_factory=factory(fail))
    assert rows_on_disk(store) == 3 * BATCH  # batches 0-2 were handed over; none is lost or half-written
    (res,) = run_units(store, plans)  # the next run resumes after them
    assert res.action == "resumed" and res.rows_written == ROWS - 3 * BATCH


def second_append_fails() -> Any:
    """UnitWriter.append that fails on the second batch, as on a full disk."""
    real_append = UnitWriter.append
    calls: list[int] = []

    def append(self: UnitWriter, rows: Any) -> int:
        calls.append(len(rows))
        if len(calls) == 2:
            raise StoreError("no space left on device while writing rows", hint="free space")
        return real_append(self, rows)

    return append


def test_a_failed_write_stops_the_run_with_its_error_and_the_unit_resumes(
        setup: tuple[Store, list[Any]], suite_file: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, plans = setup
    computed: list[int] = []
    with monkeypatch.context() as m:
        m.setattr(UnitWriter, "append", second_append_fails())
        with pytest.raises(StoreError, match="no space left"):
            run_units(store, plans, backend_factory=factory(computed.append))
    assert rows_on_disk(store) == BATCH
    assert max(computed) <= 2  # the run stopped at most one batch after the failed write, not at the end
    (res,) = run_units(store, plans)
    assert res.action == "resumed" and res.rows_written == ROWS - BATCH
    fresh = Store(store.root.parent / "fresh")  # the resumed unit equals an uninterrupted run's
    run_units(fresh, plans_for(fresh, suite_file, shared_data))
    assert fresh.units()[0].read_table().equals(store.units()[0].read_table())


def test_a_failed_write_is_the_error_shown_when_the_backend_fails_after_it(setup: tuple[Store, list[Any]],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The write of batch 1 fails while the backend computes batch 2, which fails too: the run reports the
    write's error (it came first, and it is the one that says what to do), and the unit keeps batch 0."""
    store, plans = setup

    def fail(i: int) -> None:
        if i == 2:
            raise Stop

    monkeypatch.setattr(UnitWriter, "append", second_append_fails())
    with pytest.raises(StoreError, match="no space left"):
        run_units(store, plans, backend_factory=factory(fail))
    assert rows_on_disk(store) == BATCH


def test_waiting_for_the_batch_being_written_outlasts_a_second_interrupt() -> None:
    """A stop waits for the batch in flight to be on disk; a second Ctrl-C (or SIGTERM) meanwhile does not cut
    that wait short (the unit's lock would be released while its files are still being written)."""
    from rescore.gen.runner import _settle

    class Pending:
        def __init__(self) -> None:
            self.calls = 0

        def exception(self) -> BaseException | None:
            self.calls += 1
            if self.calls == 1:
                raise KeyboardInterrupt  # the second signal arrives while waiting
            return None

    p = Pending()
    assert _settle(p) is None and p.calls == 2  # type: ignore[arg-type]
    assert _settle(None) is None
