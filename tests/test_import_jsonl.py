"""`rescore import jsonl`: a best-of-n GSM8K run saved one line per problem, imported and scored.

The file is built from 20 real GSM8K test problems: each line has 4 candidates, each either a correct
solution (the reference text) or a wrong one (the next problem's reference, whose final answer differs),
per-candidate reranker scores and per-token logprobs, laid out so that every selection metric has a known
value.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from support import invoke

from rescore.artifacts.store import Store
from rescore.score.engine import read_results

N = 20
PATTERNS = [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 1, 0], [0, 1, 0, 1], [1, 1, 1, 1]]

MAPPING = {
    "task": "gsm8k_bon",
    "model": {"name": "sft-a", "path": "/ckpt/sft-a/step_2000", "step": 2000, "stage": "sft", "precision": "bf16"},
    "seed": 0,
    "gen": {"temperature": 0.8, "n": 4, "max_new_tokens": 256},
    "sample_id_format": "{:08d}",
    "fields": {"sample_id": "problem_id", "candidates": "candidates", "target": "answer", "prompt": "question",
               "scores": "scores", "logprobs": "logprobs", "meta": ["answers"]},
}


def final(answer: str) -> str:
    return answer.split("####")[-1].strip().replace(",", "")


@pytest.fixture
def bon(shared_data: Path, tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    rows = [json.loads(x) for x in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[: N + 1]]
    lines = []
    for i in range(N):
        right, wrong = rows[i]["answer"], rows[i + 1]["answer"]
        assert final(right) != final(wrong)
        mask = PATTERNS[i % len(PATTERNS)]
        cands = [right if m else wrong for m in mask]
        scores = [0.1 * j for j in range(4)]
        scores[i % 4] = 5.0  # the reranker picks candidate i % 4
        lps = [[-1.0] * 3 for _ in range(4)]
        lps[(i + 1) % 4] = [-0.1, -0.2]  # the highest mean (and sum) logprob: candidate (i + 1) % 4
        lines.append({"problem_id": i, "question": rows[i]["question"], "answer": rows[i]["answer"],
                      "candidates": cands, "answers": [final(c) for c in cands], "scores": scores, "logprobs": lps,
                      "_mask": mask})
    data = tmp_path / "bon.jsonl"
    data.write_text("".join(json.dumps({k: v for k, v in x.items() if k != "_mask"}) + "\n" for x in lines))
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(yaml.safe_dump(MAPPING))
    return data, mapping, lines


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def agg(store: Path) -> dict[str, dict]:
    return {r["metric"]: r for r in read_results(Store(store)).to_pylist() if r["seed"] == "agg" and r["subset"] == "all"}


def expected(lines: list[dict]) -> dict[str, float]:
    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    def majority(m: list[int]) -> int:
        c = sum(m)
        return int(c > 2 or (c == 2 and m[0] == 1))  # a 2-2 tie goes to the answer seen first

    ms = [x["_mask"] for x in lines]
    return {
        "exact_match_strict": mean([m[0] for m in ms]), "exact_match_flexible": mean([m[0] for m in ms]),
        "bon_first": mean([m[0] for m in ms]), "bon_oracle": mean([float(any(m)) for m in ms]),
        "pass_at_1": mean([sum(m) / 4 for m in ms]), "maj_at_n": mean([majority(m) for m in ms]),
        "bon_majority": mean([majority(m) for m in ms]),
        "bon_reranker": mean([m[i % 4] for i, m in enumerate(ms)]),
        "bon_max_mean_logprob": mean([m[(i + 1) % 4] for i, m in enumerate(ms)]),
        "bon_max_sum_logprob": mean([m[(i + 1) % 4] for i, m in enumerate(ms)]),
    }


def test_import_then_score_best_of_n(bon, tmp_path):
    data, mapping, lines = bon
    before = sha(data)
    store = tmp_path / "store"
    r = invoke("import", "jsonl", str(data), "--map", str(mapping), "--store", str(store), "--json")
    assert r.exit_code == 0, r.output + r.stderr
    out = json.loads(r.stdout)
    (unit,) = out["units"]
    assert unit["action"] == "imported" and unit["rows"] == N and unit["request_type"] == "generate"
    reranker = Path(out["reranker_file"])
    assert reranker == store / "imports" / "reranker_scores.jsonl"
    r = invoke("score", "--store", str(store), "--reranker", str(reranker), "--no-progress")
    assert r.exit_code == 0, r.output + r.stderr
    got = agg(store)
    for metric, value in expected(lines).items():
        assert got[metric]["value"] == pytest.approx(value, abs=1e-12), metric
        assert got[metric]["n"] == N
    assert 0 < got["bon_oracle"]["value"] < 1 and got["bon_reranker"]["value"] != got["bon_first"]["value"]
    u = Store(store).unit(unit["run_id"])
    m = u.manifest
    assert (m["model"]["name"], m["model"]["step"], m["model"]["precision"], m["task"]["name"]) == ("sft-a", 2000, "bf16", "gsm8k_bon")
    assert m["gen"]["n"] == 4 and m["gen"]["temperature"] == 0.8 and m["import"]["kind"] == "jsonl"
    row = u.read_table().to_pylist()[3]
    assert row["sample_id"] == "00000003" and len(row["candidates"]) == 4
    assert json.loads(row["meta"])["answers"] == lines[3]["answers"]
    assert json.loads(row["meta"])["answer"] == final(lines[3]["answer"])
    assert sha(data) == before


def test_idempotent_and_order_independent(bon, tmp_path):
    data, mapping, _ = bon
    store = tmp_path / "store"
    r1 = invoke("import", "jsonl", str(data), "--map", str(mapping), "--store", str(store), "--json")
    rid = json.loads(r1.stdout)["units"][0]["run_id"]
    merged = store / "imports" / "reranker_scores.jsonl"
    files = {p: sha(p) for p in sorted((store / "gen").rglob("*")) if p.is_file()}
    rerank_sha = sha(merged)
    r2 = invoke("import", "jsonl", str(data), "--map", str(mapping), "--store", str(store), "--json")
    assert json.loads(r2.stdout)["units"][0] == {**json.loads(r1.stdout)["units"][0], "action": "already imported"}
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("".join(reversed(data.read_text().splitlines(keepends=True))))
    r3 = invoke("import", "jsonl", str(shuffled), "--map", str(mapping), "--store", str(store), "--json")
    assert json.loads(r3.stdout)["units"][0]["run_id"] == rid
    assert {p: sha(p) for p in sorted((store / "gen").rglob("*")) if p.is_file()} == files
    assert sha(merged) == rerank_sha and len(Store(store).units()) == 1


def test_seeds_aggregate_and_changed_outputs_are_new_units(bon, tmp_path):
    data, mapping, lines = bon
    store = tmp_path / "store"
    assert invoke("import", "jsonl", str(data), "--map", str(mapping), "--store", str(store)).exit_code == 0
    # seed 1: the same problems, candidates in another order
    data1 = tmp_path / "seed1.jsonl"
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    for x in rows:
        x["candidates"] = x["candidates"][::-1]
    data1.write_text("".join(json.dumps(x) + "\n" for x in rows))
    m1 = tmp_path / "mapping1.yaml"
    m1.write_text(yaml.safe_dump({**MAPPING, "seed": 1}))
    r = invoke("import", "jsonl", str(data1), "--map", str(m1), "--store", str(store), "--json")
    assert json.loads(r.stdout)["units"][0]["action"] == "imported"
    assert invoke("score", "--store", str(store), "--metric", "bon_first", "--no-progress").exit_code == 0
    res = read_results(Store(store)).to_pylist()
    per_seed = {r["seed"]: r["value"] for r in res if r["metric"] == "bon_first" and r["subset"] == "all"}
    first0 = sum(x["_mask"][0] for x in lines) / N
    first1 = sum(x["_mask"][3] for x in lines) / N
    assert per_seed["0"] == pytest.approx(first0) and per_seed["1"] == pytest.approx(first1)
    a = next(r for r in res if r["metric"] == "bon_first" and r["seed"] == "agg" and r["subset"] == "all")
    assert a["n_seeds"] == 2 and a["value"] == pytest.approx((first0 + first1) / 2)


def _fails(args: list[str], code: int = 1) -> str:
    r = invoke(*args)
    assert r.exit_code == code, (r.exit_code, r.output, r.stderr)
    err = r.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_truncated_file(bon, tmp_path):
    data, mapping, _ = bon
    raw = data.read_bytes()
    data.write_bytes(raw[:-40])
    err = _fails(["import", "jsonl", str(data), "--map", str(mapping), "--store", str(tmp_path / "s")])
    assert f"bon.jsonl:{N}: the last line is truncated" in err
    assert not (tmp_path / "s" / "gen").exists()


def test_wrong_keys_and_bad_values(bon, tmp_path):
    data, mapping, _ = bon
    rows = data.read_text().splitlines()
    bad = json.loads(rows[2])
    bad["cands"] = bad.pop("candidates")
    data.write_text("\n".join(rows[:2] + [json.dumps(bad)] + rows[3:]) + "\n")
    err = _fails(["import", "jsonl", str(data), "--map", str(mapping), "--store", str(tmp_path / "s")])
    assert "bon.jsonl:3: field 'candidates' is missing" in err
    bad = json.loads(rows[4])
    bad["scores"] = bad["scores"][:3]
    data.write_text("\n".join(rows[:4] + [json.dumps(bad)] + rows[5:]) + "\n")
    err = _fails(["import", "jsonl", str(data), "--map", str(mapping), "--store", str(tmp_path / "s")])
    assert "bon.jsonl:5: field 'scores' must be a list with one score per candidate (4)" in err
    dup = json.loads(rows[0])
    data.write_text("\n".join(rows + [json.dumps(dup)]) + "\n")
    err = _fails(["import", "jsonl", str(data), "--map", str(mapping), "--store", str(tmp_path / "s")])
    assert f"bon.jsonl:{N + 1}: field 'problem_id' sample id '00000000' already appeared on line 1" in err
    assert not (tmp_path / "s" / "gen").exists()


def test_mapping_errors(bon, tmp_path):
    data, _, _ = bon
    m = tmp_path / "bad.yaml"
    m.write_text(yaml.safe_dump({**MAPPING, "feilds": MAPPING["fields"]}))
    err = _fails(["import", "jsonl", str(data), "--map", str(m), "--store", str(tmp_path / "s")], code=2)
    assert "bad.yaml" in err and "feilds" in err and "fields" in err
    m.write_text(yaml.safe_dump({**MAPPING, "fields": {"sample_id": "problem_id", "candidates": "candidates"}}))
    err = _fails(["import", "jsonl", str(data), "--map", str(m), "--store", str(tmp_path / "s")], code=2)
    assert "needs 'target' or 'answer'" in err
    m.write_text(yaml.safe_dump({**MAPPING, "task": "GSM8K BoN"}))
    err = _fails(["import", "jsonl", str(data), "--map", str(m), "--store", str(tmp_path / "s")], code=2)
    assert "task" in err and "GSM8K BoN" in err


def test_interrupted_import_resumes(bon, tmp_path, monkeypatch):
    from rescore.artifacts import store as store_mod
    from rescore.importers.jsonl import import_jsonl, load_mapping

    data, mapping, _ = bon
    st = Store(tmp_path / "store")
    real_finish = store_mod.UnitWriter.finish

    def killed(self, *args, **kwargs):
        raise RuntimeError("killed before compaction")

    monkeypatch.setattr(store_mod.UnitWriter, "finish", killed)
    with pytest.raises(RuntimeError):
        import_jsonl(st, data, load_mapping(mapping))
    (u,) = st.units()
    assert u.status == "running" and u.rows_done() == N
    monkeypatch.setattr(store_mod.UnitWriter, "finish", real_finish)
    result, _, _ = import_jsonl(st, data, load_mapping(mapping))
    assert result.action == "resumed" and result.run_id == u.run_id
    (u,) = st.units()
    assert u.complete and u.read_table().num_rows == N
