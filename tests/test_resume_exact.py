"""A resumed hf unit is bit-for-bit an uninterrupted one: the backend plans batches from all of a unit's
requests and recomputes, whole, each planned batch that holds a pending row.

The requests are built so that the interruption points matter: multiple-choice rows whose choices share
a context (one packed sequence) and rows whose choices run as separate sequences in different batches,
documents whose rolling windows span several batches, and sampled generation with several candidates
per prompt (the candidates of one prompt land in different batches)."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pytest
from support import ARC_EASY, write_suite

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rescore.artifacts.schema import schema_for  # noqa: E402
from rescore.artifacts.store import nonfinite_to_null  # noqa: E402
from rescore.config import ModelConfig  # noqa: E402
from rescore.core import GenParams, Request  # noqa: E402
from rescore.gen.base import RunContext, make_backend  # noqa: E402

WIKI = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2" / "wiki.test.raw"
MAX_LEN = 48


@pytest.fixture(scope="module")
def backends(tiny_model: Path):
    made = {share: make_backend(ModelConfig(name="tiny", path=str(tiny_model), max_length=MAX_LEN,
                                            options={"share_prefix": share})) for share in (True, False)}
    yield made
    for b in made.values():
        b.close()


def loglikelihood_requests() -> list[Request]:
    words = "the quick brown fox jumps over the lazy dog while a cat sleeps in the warm sun".split()
    out = []
    for i in range(14):
        ctx = " ".join(words[: 3 + i % 9]) + (" and" * (i % 5))
        conts = tuple(" " + " ".join(words[j : j + 1 + (i + j) % 4]) for j in range(2 + i % 3))
        out.append(Request(sample_id=f"mc{i:02d}", task="t", request_type="loglikelihood", gold=0,
                           contexts=(ctx,) * len(conts), continuations=conts))
    out.append(Request(sample_id="wino", task="t", request_type="loglikelihood", gold=1,
                       contexts=("The trophy does not fit into the suitcase because the trophy",
                                 "The trophy does not fit into the suitcase because the suitcase"),
                       continuations=(" is too big.",) * 2))
    return out


def rolling_requests() -> list[Request]:
    text = WIKI.read_text(encoding="utf-8")
    docs = [text[k * 700 : k * 700 + 150 + 90 * (k % 5)] for k in range(10)]  # 1 to 6 windows each
    return [Request(sample_id=f"doc{i:02d}", task="t", request_type="rolling", text=d) for i, d in enumerate(docs)]


def generate_requests() -> list[Request]:
    qs = ["What is 2 + 2?", "Write a line about the sea.", "List three colours.", "Hi", "Name a prime.",
          "Count from one to five, slowly, with words.", "Why is the sky blue?", "Say yes."]
    return [Request(sample_id=f"g{i:02d}", task="t", request_type="generate", prompt=f"Q: {q}\nA:")
            for i, q in enumerate(qs)]


def table(rows: list[dict], request_type: str) -> pa.Table:
    """Rows as the store keeps them (the writer's Arrow conversion), sorted by sample id."""
    rows = sorted(rows, key=lambda r: r["sample_id"])
    return pa.Table.from_batches([nonfinite_to_null(pa.RecordBatch.from_pylist(rows, schema=schema_for(request_type)))])


def run(backend, reqs, ctx_kw: dict, done: frozenset[str] = frozenset()) -> list[dict]:
    ctx = RunContext(**ctx_kw, done=done)
    rows = [r for batch in backend.run(reqs, ctx) for r in batch]
    ids = [r["sample_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a row came back twice"
    assert set(ids) == {r.sample_id for r in reqs} - done, "a resumed run must return exactly the pending rows"
    return rows


CASES = {
    "loglikelihood-shared": (True, loglikelihood_requests, dict(seed=0, topk=3, batch_size=3, max_batch_tokens=160)),
    "loglikelihood-per-choice": (False, loglikelihood_requests, dict(seed=0, topk=3, batch_size=4, max_batch_tokens=200)),
    "rolling": (True, rolling_requests, dict(seed=0, topk=2, batch_size=3, max_batch_tokens=150)),
    "generate-sampled": (True, generate_requests, dict(seed=7, batch_size=4, max_batch_tokens=4096, params=GenParams(
        temperature=0.9, top_p=0.95, max_new_tokens=10, n=3, logprobs_topk=3))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resumed_rows_are_bit_identical_to_an_uninterrupted_run(backends, case):
    share, make, ctx_kw = CASES[case]
    be, reqs = backends[share], make()
    rt = reqs[0].request_type
    full = run(be, reqs, ctx_kw)
    expected = table(full, rt)
    rng = random.Random(hash(case) % 1000)
    ids = [r.sample_id for r in reqs]
    for trial in range(4):  # interruptions after a random set of rows had been stored
        done = frozenset(rng.sample(ids, rng.randint(1, len(ids) - 1)))
        by_id = {r["sample_id"]: r for r in full}
        resumed = [by_id[i] for i in done] + run(be, reqs, ctx_kw, done)
        got = table(resumed, rt)
        assert got.equals(expected), f"{case}, trial {trial}: resumed rows differ from the uninterrupted run"


def test_a_different_batching_moves_values_so_the_plan_matters(backends):
    """The guarantee needs the same batch plan: another batch size pads differently (this is why a resumed
    unit keeps the batch plan it started with). If this ever stops holding, the test above proves less."""
    be, reqs = backends[False], loglikelihood_requests()
    a = table(run(be, reqs, dict(seed=0, batch_size=1, max_batch_tokens=4096)), "loglikelihood")
    b = table(run(be, reqs, dict(seed=0, batch_size=8, max_batch_tokens=4096)), "loglikelihood")
    assert a.column("choice_token_ids").equals(b.column("choice_token_ids"))
    assert not a.column("choice_logprobs").equals(b.column("choice_logprobs"))


def test_all_rows_done_runs_nothing(backends):
    be, reqs = backends[True], rolling_requests()
    seen = []
    ctx = RunContext(seed=0, batch_size=3, done=frozenset(r.sample_id for r in reqs), on_tokens=seen.append)
    assert [r for batch in be.run(reqs, ctx) for r in batch] == []
    assert seen == [], "no batch may run when every row is stored"


def test_a_resumed_unit_keeps_the_batch_plan_it_started_with(tmp_path, tiny_model, shared_data):
    """A run stops after its first batch; the rerun asks for another batch size, but the unit resumes with
    the batch plan it started with (and says so), so its rows equal an uninterrupted run's."""
    from rescore.artifacts.store import Store
    from rescore.errors import InjectedFailure
    from rescore.gen.runner import Progress, plan_units, run_units
    from rescore.tasks.suites import load_suite

    suite_file = write_suite(tmp_path / "s.yaml", shared_data, [{**ARC_EASY, "subset_size": 12}], name="plan")
    suite = load_suite(str(suite_file))

    class StopsAfterOneBatch:
        def __init__(self, be):
            self.be, self.name, self.tokenizer = be, be.name, be.tokenizer

        def describe(self):
            return self.be.describe()

        def run(self, reqs, ctx):
            it = self.be.run(reqs, ctx)
            yield next(it)
            raise InjectedFailure("stopped after one batch")

        def close(self):
            pass

    def model(bs: int) -> ModelConfig:
        return ModelConfig(name="tiny", path=str(tiny_model), max_length=MAX_LEN, batch_size=bs, device="cpu")

    class Messages(Progress):
        def __init__(self):
            self.lines: list[str] = []

        def message(self, text: str) -> None:
            self.lines.append(text)

    ref, cut = Store(tmp_path / "ref"), Store(tmp_path / "cut")
    run_units(ref, plan_units(ref, suite, [model(2)], data_root=shared_data))
    with pytest.raises(InjectedFailure):
        run_units(cut, plan_units(cut, suite, [model(2)], data_root=shared_data),
                  backend_factory=lambda m: StopsAfterOneBatch(make_backend(m)))
    progress = Messages()
    run_units(cut, plan_units(cut, suite, [model(6)], data_root=shared_data), progress=progress)
    assert any("batch plan it started with (batch size 2" in m for m in progress.lines), progress.lines
    (a,), (b,) = ref.units(), cut.units()
    assert a.run_id == b.run_id and b.manifest["runtime"]["batch_size"] == 2
    assert a.read_table().equals(b.read_table())
