"""`rescore import tensors`: generated token ids + masks saved per method (.pt / .safetensors), decoded with
the tiny model's tokenizer, matched to real GSM8K references and scored."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import invoke

from rescore.artifacts.store import Store
from rescore.score.engine import read_results

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
tokenizers = pytest.importorskip("tokenizers")

N = 8
PAD = 2


def final(answer: str) -> str:
    return answer.split("####")[-1].strip().replace(",", "")


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def files(tiny_model: Path, shared_data: Path, tmp_path: Path) -> dict:
    tok = tokenizers.Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    rows = [json.loads(x) for x in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[: N + 1]]
    refs = tmp_path / "refs.jsonl"
    refs.write_text("".join(json.dumps({"idx": 100 + i, "question": r["question"], "answer": r["answer"]}) + "\n"
                            for i, r in enumerate(rows[:N])))
    greedy = [rows[i]["answer"] if i % 2 == 0 else rows[i + 1]["answer"] for i in range(N)]  # even rows right
    sampled_mask = [[(i + j) % 3 == 0 for j in range(3)] for i in range(N)]  # candidate j right when (i+j)%3==0
    sampled = [[rows[i]["answer"] if ok else rows[i + 1]["answer"] for ok in m] for i, m in enumerate(sampled_mask)]
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    g_ids = [enc(s) for s in greedy]
    s_ids = [[enc(s) for s in c] for c in sampled]
    T = max(max(len(x) for x in g_ids), max(len(x) for c in s_ids for x in c)) + 3
    g = torch.full((N, T), PAD, dtype=torch.long)
    gm = torch.zeros((N, T), dtype=torch.bool)
    for i, x in enumerate(g_ids):  # right padding
        g[i, : len(x)] = torch.tensor(x)
        gm[i, : len(x)] = True
    s = torch.full((N, 3, T), PAD, dtype=torch.long)
    sm = torch.zeros((N, 3, T), dtype=torch.int8)
    lps = torch.full((N, 3, T), -9.0, dtype=torch.bfloat16)
    best = [(i + 1) % 3 for i in range(N)]  # the highest mean logprob: candidate (i + 1) % 3
    for i, c in enumerate(s_ids):  # left padding
        for j, x in enumerate(c):
            s[i, j, T - len(x):] = torch.tensor(x)
            sm[i, j, T - len(x):] = 1
            lps[i, j, T - len(x):] = -0.25 if j == best[i] else -1.0
    tensors = {"greedy": {"ids": g, "mask": gm}, "sampled": {"ids": s, "mask": sm, "lps": lps},
               "problem_ids": torch.arange(100, 100 + N)}
    pt = tmp_path / "gens.pt"
    torch.save(tensors, pt)
    st = tmp_path / "gens.safetensors"
    safetensors_torch.save_file({"greedy.ids": g, "greedy.mask": gm, "sampled.ids": s, "sampled.mask": sm,
                                 "sampled.lps": lps, "problem_ids": torch.arange(100, 100 + N)}, str(st))
    mapping = {
        "task": "gsm8k", "model": {"name": "sft-b", "path": "/ckpt/sft-b", "step": 300},
        "tokenizer": str(tiny_model), "sample_ids": "problem_ids", "sample_id_format": "{:08d}",
        "references": {"file": "refs.jsonl", "sample_id": "idx", "target": "answer", "prompt": "question"},
        "methods": {"greedy": {"token_ids": "greedy.ids", "mask": "greedy.mask"},
                    "t0.7": {"token_ids": "sampled.ids", "mask": "sampled.mask", "logprobs": "sampled.lps",
                             "gen": {"temperature": 0.7, "n": 3}}},
    }
    mp = tmp_path / "map.yaml"
    mp.write_text(yaml.safe_dump(mapping))
    return {"pt": pt, "st": st, "map": mp, "mapping": mapping, "greedy": greedy, "sampled": sampled,
            "sampled_mask": sampled_mask, "best": best, "rows": rows, "tmp": tmp_path}


def _import(path: Path, mapping: Path, store: Path) -> list[dict]:
    r = invoke("import", "tensors", str(path), "--map", str(mapping), "--store", str(store), "--json")
    assert r.exit_code == 0, r.output + r.stderr
    return json.loads(r.stdout)["units"]


def test_pt_import_decodes_and_scores(files, tmp_path):
    store = tmp_path / "store"
    before = sha(files["pt"])
    units = _import(files["pt"], files["map"], store)
    assert [(u["task"], u["action"], u["rows"]) for u in units] == [("gsm8k.greedy", "imported", N), ("gsm8k.t0.7", "imported", N)]
    st = Store(store)
    g = st.unit(units[0]["run_id"]).read_table().to_pylist()
    s = st.unit(units[1]["run_id"]).read_table().to_pylist()
    assert [r["sample_id"] for r in g] == [f"{100 + i:08d}" for i in range(N)]
    assert [r["candidates"] for r in g] == [[x] for x in files["greedy"]]
    assert [r["candidates"] for r in s] == files["sampled"]
    assert [r["target"] for r in g] == [r["answer"] for r in files["rows"][:N]]
    assert [r["prompt"] for r in g] == [r["question"] for r in files["rows"][:N]]
    assert json.loads(g[0]["meta"])["answer"] == final(files["rows"][0]["answer"])
    assert all(len(lp) == len(ids) for r in s for lp, ids in zip(r["cand_logprobs"], r["cand_token_ids"], strict=True))
    assert st.unit(units[1]["run_id"]).manifest["gen"]["n"] == 3
    r = invoke("score", "--store", str(store), "--no-progress")
    assert r.exit_code == 0, r.output + r.stderr
    res = {(x["task"], x["metric"]): x["value"] for x in read_results(st).to_pylist()
           if x["seed"] == "agg" and x["subset"] == "all"}
    assert res[("gsm8k.greedy", "exact_match_strict")] == 0.5
    m = files["sampled_mask"]
    assert res[("gsm8k.t0.7", "bon_first")] == pytest.approx(sum(x[0] for x in m) / N)
    assert res[("gsm8k.t0.7", "bon_oracle")] == pytest.approx(sum(any(x) for x in m) / N)
    assert res[("gsm8k.t0.7", "bon_max_mean_logprob")] == pytest.approx(sum(x[b] for x, b in zip(m, files["best"], strict=True)) / N)
    assert res[("gsm8k.t0.7", "pass_at_1")] == pytest.approx(sum(sum(x) / 3 for x in m) / N)
    assert sha(files["pt"]) == before


def test_safetensors_same_content_is_the_same_unit(files, tmp_path):
    store = tmp_path / "store"
    first = _import(files["pt"], files["map"], store)
    again = _import(files["st"], files["map"], store)
    assert [u["run_id"] for u in again] == [u["run_id"] for u in first]
    assert {u["action"] for u in again} == {"already imported"}
    # tokenizer.json instead of the directory: another tokenizer spec, same decoded text
    m2 = files["tmp"] / "map2.yaml"
    m2.write_text(yaml.safe_dump({**files["mapping"], "tokenizer": "tokenizer.json"}))
    (files["tmp"] / "tokenizer.json").write_bytes((Path(files["mapping"]["tokenizer"]) / "tokenizer.json").read_bytes())
    other = _import(files["st"], m2, store)
    assert {u["action"] for u in other} == {"imported"}
    st = Store(store)
    for a, b in zip(first, other, strict=True):
        assert st.unit(a["run_id"]).read_table(["candidates"]) == st.unit(b["run_id"]).read_table(["candidates"])


def _fails(args: list[str], code: int = 1) -> str:
    r = invoke(*args)
    assert r.exit_code == code, (r.exit_code, r.output, r.stderr)
    err = r.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


class Evil:
    """Pickles as a call to open(path, "w"): loading it with full pickle would create the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_refuses_pickle_that_is_not_weights_only(files, tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pt"
    torch.save({"greedy": {"ids": torch.zeros(2, 3, dtype=torch.long)}, "x": Evil(str(marker))}, bad)
    err = _fails(["import", "tensors", str(bad), "--map", str(files["map"]), "--store", str(tmp_path / "s")])
    assert "bad.pt: refused: not a weights-only file" in err
    assert not marker.exists() and not (tmp_path / "s" / "gen").exists()


def test_malformed_tensor_inputs(files, tmp_path):
    store = str(tmp_path / "s")
    m = files["tmp"] / "m.yaml"
    bad = json.loads(json.dumps(files["mapping"]))
    bad["methods"]["greedy"]["token_ids"] = "greedy.idz"
    m.write_text(yaml.safe_dump(bad))
    err = _fails(["import", "tensors", str(files["pt"]), "--map", str(m), "--store", store])
    assert "gens.pt: no tensor 'greedy.idz'" in err and "greedy.ids" in err
    bad = json.loads(json.dumps(files["mapping"]))
    bad["methods"]["greedy"]["mask"] = "sampled.mask"
    m.write_text(yaml.safe_dump(bad))
    err = _fails(["import", "tensors", str(files["pt"]), "--map", str(m), "--store", store])
    assert "field 'sampled.mask' shape" in err
    refs = files["tmp"] / "refs.jsonl"
    refs.write_text("".join(refs.read_text().splitlines(keepends=True)[:-1]))
    err = _fails(["import", "tensors", str(files["pt"]), "--map", str(files["map"]), "--store", store])
    assert "refs.jsonl: field 'idx' has no reference for sample id(s) ['00000107']" in err
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(files["st"].read_bytes()[:200])
    err = _fails(["import", "tensors", str(trunc), "--map", str(files["map"]), "--store", store])
    assert "trunc.safetensors: not a readable safetensors file" in err
    bad = json.loads(json.dumps(files["mapping"]))
    bad["mask"] = "sometimes"
    m.write_text(yaml.safe_dump(bad))
    assert "mask" in _fails(["import", "tensors", str(files["pt"]), "--map", str(m), "--store", store], code=2)
    assert not (tmp_path / "s" / "gen").exists()


def test_safetensors_import_needs_no_torch(files, tmp_path):
    m2 = files["tmp"] / "map2.yaml"
    (files["tmp"] / "tokenizer.json").write_bytes((Path(files["mapping"]["tokenizer"]) / "tokenizer.json").read_bytes())
    m2.write_text(yaml.safe_dump({**files["mapping"], "tokenizer": "tokenizer.json"}))
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from rescore.cli import app\n"
        f"r = CliRunner().invoke(app, ['import', 'tensors', {str(files['st'])!r}, '--map', {str(m2)!r}, "
        f"'--store', {str(tmp_path / 'store')!r}])\n"
        "assert r.exit_code == 0, r.output + r.stderr\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
