"""hf backend: identical sequences of a planned batch run once. On an MMLU 5-shot task at a small max_length
(every choice left-truncated to the same last context tokens), the rows equal those of a run that feeds every
choice as its own sequence, bit for bit, with a quarter of the forward sequences. (Bit for bit where both runs
feed the model batches of the same shape, as here: N questions fill every batch of either plan. A partial last
batch has another shape, which like any change of batch size may move the last bits of a float.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rescore.config import ModelConfig, TaskConfig  # noqa: E402
from rescore.gen.base import RunContext, make_backend  # noqa: E402
from rescore.gen.units import Span, Unit, plan_batches  # noqa: E402
from rescore.tasks.base import families  # noqa: E402
from rescore.tasks.common import IDX  # noqa: E402

MAX_LEN = 48  # far shorter than a 5-shot MMLU prompt: every choice is left-truncated
N = 16  # a multiple of 4 and 16: every batch of both plans is full


def mmlu_5shot_requests(data_root: Path):
    import rescore.tasks  # noqa: F401

    case = json.loads((Path(__file__).parent / "golden" / "mmlu_hscs_5shot.json").read_text())
    task = TaskConfig(**case["task"], num_fewshot=5)
    fam = families.get(task.family)
    rows, pool = fam.load_rows(task, data_root)
    shots = {r[IDX]: r for r in pool}
    return fam.build_requests(task, rows[:N], [shots[i] for i in range(5)], None)


def run(backend, reqs, dedupe: bool, batch_size: int) -> tuple[dict, int]:
    backend.dedupe = dedupe
    backend.forward_sequences = 0
    rows = {}
    for batch in backend.run(reqs, RunContext(seed=0, batch_size=batch_size, topk=3)):
        rows.update({r["sample_id"]: r for r in batch})
    return rows, backend.forward_sequences


def same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_truncated_mmlu_choices_run_once_with_identical_rows(tiny_model, shared_data, batch_size):
    reqs = mmlu_5shot_requests(shared_data)
    assert len(reqs) == N and all(len(r.continuations) == 4 for r in reqs)
    be = make_backend(ModelConfig(name="tiny", path=str(tiny_model), max_length=MAX_LEN))
    try:
        plain, n_plain = run(be, reqs, dedupe=False, batch_size=batch_size)
        deduped, n_dedupe = run(be, reqs, dedupe=True, batch_size=batch_size)
    finally:
        be.close()
    assert n_plain == 4 * N  # one sequence per choice
    assert n_dedupe == N  # one per question: its choices' inputs are the same last MAX_LEN context tokens
    assert plain.keys() == deduped.keys() == {r.sample_id for r in reqs}
    for sid in plain:
        assert same(plain[sid], deduped[sid]), sid


def test_plan_counts_twins_as_one_sequence():
    def u(owner, toks):
        return Unit(owner, toks, [Span(0, [len(toks) - 1], [1])])

    units = [u(0, [5, 6, 7]), u(0, [5, 6, 7]), u(0, [5, 6, 7]), u(1, [8, 9, 7]), u(1, [8, 9, 7]), u(2, [1, 2, 3])]
    plain = plan_batches(units, 2, 10_000)
    deduped = plan_batches(units, 2, 10_000, dedupe=True)
    assert [[x.owner for x in b] for b in plain] == [[0, 0], [0, 1], [1, 2]]
    assert [[x.owner for x in b] for b in deduped] == [[0, 0, 0, 1, 1], [2]]
    distinct = [u(i, [i, i + 1]) for i in range(5)]  # no twins: the same plan either way
    assert plan_batches(distinct, 2, 10_000, dedupe=True) == plan_batches(distinct, 2, 10_000)
