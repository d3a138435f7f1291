"""Determinism check on the hf backend: generate demo-suite units with the tiny model through the runner,
then regenerate rows from the manifests and compare."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import invoke

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rescore.artifacts.store import Store  # noqa: E402
from rescore.config import ModelConfig  # noqa: E402
from rescore.gen.verify import compare_rows, verify_determinism  # noqa: E402

TASKS = ["wikitext2_packed", "hellaswag", "gsm8k_chat"]


@pytest.fixture(scope="module")
def generated(tiny_model: Path, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    from rescore.gen.runner import plan_units, run_units
    from rescore.tasks.suites import load_suite

    store = Store(tmp_path_factory.mktemp("verify") / "store")
    model = ModelConfig(name="tiny", path=str(tiny_model), batch_size=4)
    plans = plan_units(store, load_suite("demo"), [model], allow_direct=True, tasks=TASKS, seeds=[1])
    results = run_units(store, plans)
    assert all(r.action == "generated" for r in results)
    return store.root, {r.plan.task.name: r.plan.run_id for r in results}


@pytest.mark.parametrize("task", TASKS)
def test_regenerated_rows_match(generated, task):
    root, ids = generated
    rep = verify_determinism(root, ids[task], rows=3, batch_size=1)  # another batch size than the run's 4
    assert rep.ok, rep.to_dict()
    assert rep.rows == 3 and rep.sequences >= 3 and rep.token_mismatches == 0
    assert rep.fingerprint_match is True
    assert rep.max_abs_logprob_diff <= 1e-4


def test_other_weights_are_caught(generated, tmp_path):
    from rescore.gen.tiny import build_tiny_model

    root, ids = generated
    other = build_tiny_model(tmp_path / "other", seed=7)
    rep = verify_determinism(root, ids["gsm8k_chat"], rows=2, model_path=str(other))
    assert not rep.ok and rep.fingerprint_match is False
    assert rep.token_mismatches > 0 and rep.mismatched_samples
    rep = verify_determinism(root, ids["hellaswag"], rows=2, model_path=str(other))
    assert not rep.ok and rep.token_mismatches == 0 and rep.max_abs_logprob_diff > 1e-2


def test_compare_rows_counts():
    old = [{"sample_id": "a", "cand_token_ids": [[1, 2, 3], [4, 5]], "cand_logprobs": [[-1.0, -2.0, -3.0], [-1.0, -1.0]]}]
    same = compare_rows("generate", old, old)
    assert same == (2, 0, 0.0, None, [])
    new = [{"sample_id": "a", "cand_token_ids": [[1, 2, 9], [4, 5]], "cand_logprobs": [[-1.0, -2.5, -0.1], [-1.0, -1.0]]}]
    n, mism, worst, wid, bad = compare_rows("generate", old, new)
    assert (n, mism, wid, bad) == (2, 1, "a", ["a"]) and worst == pytest.approx(0.5)
    n, mism, _, _, bad = compare_rows("generate", old, [])
    assert (n, mism, bad) == (2, 2, ["a"])
    roll = [{"sample_id": "d", "token_ids": [5, 6], "logprobs": [-0.5, -0.25]}]
    assert compare_rows("rolling", roll, [{"sample_id": "d", "token_ids": [5, 6], "logprobs": [-0.5, -0.2]}])[2] == pytest.approx(0.05)


def test_cli_verify_determinism(generated, tmp_path):
    import json

    from rescore.gen.tiny import build_tiny_model

    root, ids = generated
    res = invoke("verify", "determinism", ids["hellaswag"], "--store", str(root), "--rows", "2", "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout[res.stdout.index("{"):])
    assert rep["ok"] and rep["rows"] == 2 and rep["token_mismatches"] == 0
    other = build_tiny_model(tmp_path / "other", seed=3)
    res = invoke("verify", "determinism", ids["gsm8k_chat"], "--store", str(root), "--rows", "1",
                 "--model-path", str(other))
    assert res.exit_code == 1, res.output
    assert "NOT reproduced" in res.stdout and "DIFFERENT" in res.stdout
    res = invoke("verify", "determinism", "nosuchrun", "--store", str(root))
    assert res.exit_code != 0 and "Traceback" not in res.output
