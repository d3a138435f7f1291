"""Stored next-token distributions (a task's ``dist``): side files written with the rows, byte-identical after a
resume, checked on read, and the metrics on them: KL from stored float16 distributions equals KL from the
models' own logits, a checkpoint's KL to itself is 0, and top-k + tail stays within the bound its tail admits."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from support import ARC_EASY, WIKI_PAGES, cli, write_suite

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rescore.artifacts.store import Store  # noqa: E402
from rescore.artifacts.tensors import read_dist  # noqa: E402
from rescore.config import DistConfig, ModelConfig  # noqa: E402
from rescore.errors import ConfigError, CorruptArtifactError  # noqa: E402
from rescore.gen.runner import plan_units, run_units  # noqa: E402
from rescore.score.metrics_dist import entropy, kl_pair, tail_mass, unit_metrics  # noqa: E402
from rescore.tasks.suites import load_suite  # noqa: E402

MAX_LEN = 64


def suite_file(tmp: Path, shared: Path, mc_dist: str, ppl_dist: str) -> Path:
    """arc_easy (10 rows) and two WikiText-2 pages, with the ``dist`` of each given as YAML."""
    import yaml

    return write_suite(tmp / "dist.yaml", shared, [
        {**ARC_EASY, "subset_size": 10, "dist": yaml.safe_load(mc_dist)},
        {**WIKI_PAGES, "subset_size": 2, "dist": yaml.safe_load(ppl_dist)},
    ], name="distsuite")


def model(path: Path, name: str = "tiny", step: int | None = None) -> ModelConfig:
    return ModelConfig(name=name, path=str(path), device="cpu", batch_size=3, max_length=MAX_LEN, step=step)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second checkpoint with the same tokenizer (another seed of the tiny model)."""
    from rescore.gen.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.getbasetemp() / "tiny-model-seed1", seed=1)


class Crash(Exception):
    pass


def crashing(after: int):
    """A backend factory whose backend stops the run after ``after`` batches of rows (a kill between batches)."""
    from rescore.gen.base import make_backend

    def factory(cfg):
        b = make_backend(cfg)
        run = b.run

        def limited(requests, ctx):
            for i, rows in enumerate(run(requests, ctx)):
                if i == after:
                    raise Crash
                yield rows

        b.run = limited
        return b

    return factory


def generate(store: Path, suite: Path, m: ModelConfig, **kw):
    s = load_suite(str(suite))
    plans = plan_units(Store(store), s, [m])
    return plans, run_units(Store(store), plans, **kw)


def dist_bytes(store: Path) -> dict[str, bytes]:
    return {p.parent.parent.name: p.read_bytes() for p in sorted(store.glob("gen/*/tensors/dist.safetensors"))}


def test_side_files_are_written_referenced_checked_and_byte_identical_after_a_resume(tmp_path, tiny_model, shared_data):
    s = suite_file(tmp_path, shared_data, "{format: {topk: 8}}", "{positions: {every: 3}, format: full}")
    m = model(tiny_model)
    plans, _ = generate(tmp_path / "ref", s, m)
    ref = dist_bytes(tmp_path / "ref")
    assert len(ref) == 2
    # each run stops after one batch of rows (both units are interrupted, several times), then resumes
    crashes = 0
    for _ in range(12):
        try:
            generate(tmp_path / "cut", s, m, backend_factory=crashing(1))
            break
        except Crash:
            crashes += 1
            assert list((tmp_path / "cut").glob("gen/*/tensors/part-*.safetensors"))
    assert crashes >= 3
    assert dist_bytes(tmp_path / "cut") == ref
    assert not list((tmp_path / "cut").glob("gen/*/tensors/part-*"))

    for u in Store(tmp_path / "ref").units():
        d = read_dist(u)
        info = u.manifest["dist"]
        if d.format == "topk":  # read into memory (a few hundred bytes a position): nothing is kept open
            assert open_handles(u.path / info["file"]) == 0
        assert info["positions"] == len(d.positions) > 0 and info["bytes"] == (u.path / info["file"]).stat().st_size
        rows = {r["sample_id"]: r for r in u.read_table().to_pylist()}
        assert d.sample_ids == sorted(rows)
        for i, sid in enumerate(d.sample_ids):
            a, b = d.offsets[i], d.offsets[i + 1]
            r = rows[sid]
            if u.request_type == "loglikelihood":  # answer: every continuation token, choices one after another
                toks = np.concatenate([np.asarray(c) for c in r["choice_token_ids"]])
                lps = np.concatenate([np.asarray(c) for c in r["choice_logprobs"]])
                assert np.array_equal(d.positions[a:b], np.arange(len(toks)))
                head = {t: v for t, v in zip(d.topk_ids[a], d.topk_logprobs[a], strict=True)}
                assert np.all(d.topk_logprobs[a:b, :-1] >= d.topk_logprobs[a:b, 1:])
                if toks[0] in head:
                    assert abs(head[toks[0]] - lps[0]) < 2e-2
            else:  # one token in three, from an offset drawn from the sample id
                toks, lps = np.asarray(r["token_ids"]), np.asarray(r["logprobs"])
                pos = d.positions[a:b]
                assert len(pos) and np.all(np.diff(pos) == 3) and pos[0] < 3 and len(toks) - pos[-1] <= 3
                np.testing.assert_allclose(d.logprobs[np.arange(a, b), d.targets[a:b]], lps[pos], atol=2e-2)
            assert np.array_equal(d.targets[a:b], toks[d.positions[a:b]])
            assert r["dist_positions"] == d.positions[a:b].tolist()  # the rows name their stored positions


@pytest.fixture(scope="module")
def drifted_model(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """The tiny model's weights plus small noise: a later checkpoint of the same run (same tokenizer)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.getbasetemp() / "tiny-model-drifted"
    shutil.copytree(tiny_model, out)
    net = AutoModelForCausalLM.from_pretrained(tiny_model)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for prm in net.parameters():
            prm.add_(torch.randn(prm.shape, generator=g) * 0.003)
    net.save_pretrained(out)
    return out


@pytest.mark.slow
def test_kl_from_stored_full_distributions_equals_kl_from_the_logits(tmp_path, tiny_model, drifted_model, shared_data):
    import torch
    from transformers import AutoModelForCausalLM

    other_model = drifted_model

    s = suite_file(tmp_path, shared_data, "{format: full}", "{positions: {every: 7}, format: full}")
    plans_a, _ = generate(tmp_path / "st", s, model(tiny_model, "a", step=0))
    plans_b, _ = generate(tmp_path / "st", s, model(other_model, "b", step=100))
    store = Store(tmp_path / "st")
    units = {u.run_id: u for u in store.units()}
    for pa_, pb in zip(plans_a, plans_b, strict=True):
        da, db = read_dist(units[pa_.run_id]), read_dist(units[pb.run_id])
        pair = kl_pair(da, db)
        assert np.all(kl_pair(da, da).forward == 0.0) and np.all(kl_pair(da, da).reverse == 0.0)
        if pa_.request_type != "rolling":
            continue
        # KL straight from the two models' float32 logits on the same tokens (one document's first window)
        rows = {r["sample_id"]: r for r in units[pa_.run_id].read_table().to_pylist()}
        sid = da.sample_ids[0]
        toks = rows[sid]["token_ids"][: MAX_LEN - 1]
        a, b = da.offsets[0], da.offsets[1]
        keep = [k for k in range(a, b) if da.positions[k] < len(toks)]
        ids = torch.tensor([[units[pa_.run_id].manifest["model"]["prefix_token_id"], *toks[:-1]]])
        lps = []
        for path in (tiny_model, other_model):
            net = AutoModelForCausalLM.from_pretrained(path).eval()
            with torch.inference_mode():
                lps.append(torch.log_softmax(net(input_ids=ids).logits[0].double(), -1).numpy())
        p = da.positions[keep]
        want_f = (np.exp(lps[0][p]) * (lps[0][p] - lps[1][p])).sum(1)
        want_r = (np.exp(lps[1][p]) * (lps[1][p] - lps[0][p])).sum(1)
        assert want_f.mean() > 1e-2  # two different models
        np.testing.assert_allclose(pair.forward[keep], want_f, atol=1e-4)
        np.testing.assert_allclose(pair.reverse[keep], want_r, atol=1e-4)
        assert abs(pair.forward[keep].mean() - want_f.mean()) < 1e-4
        assert abs(pair.mean() - pair.forward.mean()) == 0
        # per-unit metrics from full distributions
        ent = entropy(da)
        assert np.all(ent > 0) and np.all(ent <= np.log(da.vocab) + 1e-6)
        assert 0 <= unit_metrics(da)["dist_ece"] <= 1 and np.all((tail_mass(da) >= 0) & (tail_mass(da) <= 1))
    # rescore compare --baseline a -M kl: the token-level mean KL of each task, both ways, with its bootstrap
    out = cli("compare", "--store", str(tmp_path / "st"), "--baseline", "a", "-M", "kl*", "-M", "dist_*", "-f", "json")
    assert out.returncode == 0, out.stderr
    got = {(r["task"], r["metric"]): r for r in json.loads(out.stdout)["rows"]}
    assert set(got) == {(t, m) for t in ("arc_easy", "wiki")
                        for m in ("kl", "kl_reverse", "dist_entropy", "dist_tail_mass", "dist_ece")}
    for pa_, pb in zip(plans_a, plans_b, strict=True):
        da, db = read_dist(units[pa_.run_id]), read_dist(units[pb.run_id])
        for side, d in (("base", da), ("value", db)):  # the per-unit metrics of each side, token-level
            want = unit_metrics(d)
            for m in ("dist_entropy", "dist_tail_mass", "dist_ece"):
                assert got[(pa_.task.name, m)][side] == pytest.approx(want[m], rel=1e-9)
        pair = kl_pair(da, db)
        for m, which in (("kl", "forward"), ("kl_reverse", "reverse")):
            r = got[(pa_.task.name, m)]
            assert r["base"] == 0.0 and r["value"] == pytest.approx(pair.mean(which), rel=1e-12)
            assert r["ci_low"] <= r["value"] <= r["ci_high"] and r["n"] == len(pair.sample_ids)
    # the report plots KL to the bridge against step
    assert cli("score", "--store", str(tmp_path / "st")).returncode == 0
    out = cli("report", str(tmp_path / "r.html"), "--store", str(tmp_path / "st"), "--baseline", "a")
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "r.html").read_text()
    # one figure per task in the style of the metric-vs-step figures: a subplot per direction
    assert 'id="kl"' in page
    for task in ("wiki", "arc_easy"):
        fig = re.search(rf'<figure id="kl-{task}" class="plot kl" data-task="{task}" data-metrics="kl kl_reverse".*?</figure>',
                        page, re.S)
        assert fig, task
        assert len(re.findall(r'<g id="axes_\d+">', fig.group(0))) == 2
        assert "KL(bridge ‖ checkpoint) ↓" in fig.group(0) and "KL(checkpoint ‖ bridge) ↓" in fig.group(0)


def open_handles(path: Path) -> int:
    """How many file descriptors and mappings of this process point at ``path``."""
    import gc
    import os

    gc.collect()
    fds = sum(1 for f in Path("/proc/self/fd").iterdir() if os.path.realpath(f) == str(path.resolve()))
    maps = sum(1 for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(str(path.resolve())))
    return fds + maps


def test_full_distributions_are_mapped_and_their_metrics_taken_a_block_at_a_time(tmp_path, tiny_model, shared_data,
                                                                                 monkeypatch):
    """A unit's ``full`` file is mapped, not read into memory, and every metric over it is the same, bit for bit,
    whether its positions are taken in one block or a few at a time (a large file never needs its size in
    memory, let alone its float64 size)."""
    import rescore.score.metrics_dist as md

    s = suite_file(tmp_path, shared_data, "{format: full}", "{positions: all, format: full}")
    generate(tmp_path / "st", s, model(tiny_model))
    units = Store(tmp_path / "st").units()
    assert len(units) == 2
    for u in units:
        d = read_dist(u)
        assert isinstance(d.stored_logprobs, np.memmap) and d.stored_logprobs.dtype == np.float16
        # one mapping of the file (and the descriptor Python's mmap keeps), not one per tensor
        assert open_handles(u.path / u.manifest["dist"]["file"]) <= 2
        whole = (entropy(d), tail_mass(d), md.top1(d), kl_pair(d, d).forward)
        monkeypatch.setattr(md, "FULL_CHUNK_ENTRIES", 3 * d.vocab)  # three positions per block
        assert len(list(d.full_chunks(3 * d.vocab))) > 2
        blocks = (entropy(d), tail_mass(d), md.top1(d), kl_pair(d, d).forward)
        monkeypatch.undo()
        for a, b in zip(whole[:2] + whole[2] + whole[3:], blocks[:2] + blocks[2] + blocks[3:], strict=True):
            assert np.array_equal(a, b)
        assert np.array_equal(whole[0], -(np.exp(md._normalised(d.logprobs)) * md._normalised(d.logprobs)).sum(1))


def test_topk_kl_of_all_positions_at_once_equals_the_kl_position_by_position() -> None:
    """KL between two top-K units is computed for all positions at once; it equals the definition applied to
    each position alone (shared head tokens plus one outcome for the rest), for positions that share all, some
    or none of their top-K tokens, and a unit's KL to itself is exactly 0."""
    from rescore.artifacts.tensors import DistTensors
    from rescore.score.metrics_dist import _head_tail

    rng = np.random.default_rng(0)
    n, k, vocab = 300, 8, 40

    def unit(run_id: str, ids: np.ndarray) -> DistTensors:
        lps = np.sort(rng.standard_normal((n, k)).astype(np.float32) - 3.0, axis=1)[:, ::-1].copy()
        tail = np.log1p(-np.exp(lps.astype(np.float64)).sum(1).clip(max=0.999)).astype(np.float32)
        return DistTensors(run_id=run_id, sample_ids=["s0", "s1"], offsets=np.array([0, 100, n]),
                           positions=np.arange(n, dtype=np.int32), targets=np.zeros(n, np.int32), vocab=vocab,
                           format="topk", topk_ids=ids, topk_logprobs=lps, tail_logmass=tail)

    ids_a = np.stack([rng.permutation(vocab)[:k] for _ in range(n)])
    ids_b = np.stack([rng.permutation(vocab)[:k] for _ in range(n)])
    ids_b[:50] = ids_a[:50][:, ::-1]  # the same tokens in another order
    ids_a[50:100], ids_b[50:100] = np.arange(vocab - k, vocab), np.arange(k)  # no shared token
    a, b = unit("a", ids_a), unit("b", ids_b)

    def by_position(x: DistTensors, y: DistTensors) -> tuple[np.ndarray, np.ndarray]:
        ix, hx, _ = _head_tail(x)
        iy, hy, _ = _head_tail(y)
        fwd, rev = np.zeros(n), np.zeros(n)
        for i in range(n):
            common, px, py = np.intersect1d(ix[i], iy[i], assume_unique=True, return_indices=True)
            if not len(common):
                continue
            lp = np.append(hx[i][px], np.log(max(1.0 - np.exp(hx[i][px]).sum(), 0.0)))
            lq = np.append(hy[i][py], np.log(max(1.0 - np.exp(hy[i][py]).sum(), 0.0)))
            fwd[i] = max(float(np.sum(np.exp(lp) * (lp - lq))), 0.0)
            rev[i] = max(float(np.sum(np.exp(lq) * (lq - lp))), 0.0)
        return fwd, rev

    got = kl_pair(a, b)
    want = by_position(a, b)
    np.testing.assert_allclose(got.forward, want[0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.reverse, want[1], rtol=1e-12, atol=1e-15)
    assert (got.forward[50:100] == 0).all() and (got.forward[100:] > 0).any()
    assert not kl_pair(a, a).forward.any() and not kl_pair(a, a).reverse.any()


@pytest.mark.parametrize("peaked_rows", [3, 40], ids=["few-peaked-rows", "most-rows-peaked"])
def test_the_tail_mass_is_exact_where_the_head_holds_nearly_all_the_mass(peaked_rows: int) -> None:
    """log(1 - head mass) loses precision when the head holds nearly everything (a trained model's confident
    tokens); those rows sum their tail exactly, whether they are a few rows or most of them, and a tail entry
    equal to the K-th logprob is counted in the tail."""
    import torch

    from rescore.gen.dist import dist_arrays

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(48, 500, generator=g, dtype=torch.float64)
    logits[:peaked_rows, 7] += 25.0  # one token holds all but ~1e-9 of the mass
    logits[0, 100:103] = logits[0].topk(8).values[-1]  # ties with the 8th value, outside the top 8
    lp = torch.log_softmax(logits.float(), dim=-1)
    out = dist_arrays(DistConfig(positions="all", format={"topk": 8}), lp)
    ids = torch.from_numpy(out["topk_ids"].astype(np.int64))
    exact = torch.logsumexp(lp.double().scatter(1, ids, float("-inf")), dim=-1).numpy()
    tail = out["tail_logmass"]
    assert (tail[:peaked_rows] < -15).all()  # the rows that take the exact sum
    np.testing.assert_allclose(tail[:peaked_rows], exact[:peaked_rows], rtol=1e-6)
    np.testing.assert_allclose(tail, exact, rtol=1e-3)  # the others: log(1 - head mass) in float64


def test_the_exact_tail_of_a_row_with_few_finite_logprobs_or_a_far_tail_is_not_nan_or_lost() -> None:
    """A row whose K-th logprob is -inf (masked logits: fewer finite entries than K) has no tail (-inf, not NaN);
    a row whose tail lies far below its K-th logprob keeps that tail (its entries relative to the K-th underflow)."""
    import torch

    from rescore.gen.dist import dist_arrays

    lp = torch.full((4, 12), float("-inf"))
    lp[0, :3] = torch.tensor([0.7, 0.2, 0.1]).log()  # three finite entries, K = 4
    lp[1] = torch.tensor([0.0, -20.0, *[-200.0] * 10]).log_softmax(-1)  # the tail 180 below the K-th
    lp[2:] = torch.randn(2, 12, generator=torch.Generator().manual_seed(0)).log_softmax(-1)
    for peaked in (2, 4):  # a few rows take the exact tail, or every row does
        rows = lp[:peaked] if peaked == 4 else lp[:2]
        out = dist_arrays(DistConfig(positions="all", format={"topk": 4}), rows)
        ids = torch.from_numpy(out["topk_ids"].astype(np.int64))
        exact = torch.logsumexp(rows.double().scatter(1, ids, float("-inf")), dim=-1).numpy()
        tail = out["tail_logmass"]
        assert tail[0] == -np.inf and np.isfinite(tail[1:]).all()
        np.testing.assert_allclose(tail[1:], exact[1:], rtol=1e-5)


def test_rows_without_stored_positions_sum_to_zero_wherever_they_are() -> None:
    """Rows that store no position (positions: {every: N} on a short document) give 0 in the per-row sums, also
    when they come last in sample-id order."""
    from rescore.artifacts.tensors import DistTensors
    from rescore.score.metrics_dist import per_row, row_stats

    lp = np.log(np.full((3, 4), 0.25)).astype(np.float16)
    d = DistTensors(run_id="x", sample_ids=["a", "b", "c", "d"], offsets=np.array([0, 0, 3, 3, 3]),
                    positions=np.zeros(3, np.int32), targets=np.zeros(3, np.int32), vocab=4, format="full",
                    stored_logprobs=lp)
    sums, counts = per_row(d, np.array([1.0, 2.0, 4.0]))
    assert sums.tolist() == [0.0, 7.0, 0.0, 0.0] and counts.tolist() == [0.0, 3.0, 0.0, 0.0]
    ent = row_stats(d)["dist_entropy"]
    np.testing.assert_allclose(ent["num"], [0.0, 3 * np.log(4), 0.0, 0.0])
    assert kl_pair(d, d).rows()["num"].tolist() == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.slow  # over 5 s on 2 cores: the slow tier (CI runs it too)
def test_topk_kl_is_within_the_bound_of_its_tail(tmp_path, tiny_model, other_model, shared_data):
    full = suite_file(tmp_path, shared_data, "{format: full}", "{positions: {every: 11}, format: full}")
    (tmp_path / "k").mkdir()
    topk = suite_file(tmp_path / "k", shared_data, "{format: {topk: 32}}", "{positions: {every: 11}, format: {topk: 32}}")
    got = {}
    for kind, s in (("full", full), ("topk", topk)):
        pa_, _ = generate(tmp_path / kind, s, model(tiny_model, "a"))
        pb, _ = generate(tmp_path / kind, s, model(other_model, "b"))
        units = {u.run_id: u for u in Store(tmp_path / kind).units()}
        got[kind] = [(read_dist(units[x.run_id]), read_dist(units[y.run_id])) for x, y in zip(pa_, pb, strict=True)]
    for (fa, fb), (ta, tb) in zip(got["full"], got["topk"], strict=True):
        exact, approx = kl_pair(fa, fb).forward, kl_pair(ta, tb).forward
        assert np.all(kl_pair(ta, ta).forward == 0.0)
        # a lower bound (data processing) that misses exactly the tail's own term P(R) * KL(P|R || Q|R), where R
        # is every token outside the two top-k sets' intersection
        lp = fa.logprobs.astype(np.float64)
        lq = fb.logprobs.astype(np.float64)
        lp -= np.log(np.exp(lp).sum(1, keepdims=True))
        lq -= np.log(np.exp(lq).sum(1, keepdims=True))
        bound = np.empty(len(lp))
        for i in range(len(lp)):
            rest = np.ones(lp.shape[1], bool)
            rest[np.intersect1d(ta.topk_ids[i], tb.topk_ids[i])] = False
            p, q = np.exp(lp[i][rest]), np.exp(lq[i][rest])
            bound[i] = (p * (lp[i][rest] - lq[i][rest])).sum() - p.sum() * np.log(p.sum() / q.sum())
        assert np.all(approx <= exact + 2e-3)
        np.testing.assert_allclose(exact - approx, bound, atol=2e-3)
        assert np.all(tail_mass(ta) > 0) and np.all(tail_mass(ta) < 1)


@pytest.mark.slow
def test_bad_inputs_are_one_line_errors(tmp_path, tiny_model, shared_data):
    # a positions spec that selects nothing: 'answer' on a rolling task
    s = suite_file(tmp_path, shared_data, "{format: full}", "{positions: answer, format: full}")
    out = cli("gen", str(s), "--model", str(tiny_model), "--name", "tiny", "--device", "cpu", "--no-progress",
              "--store", str(tmp_path / "st"))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "select nothing in a rolling task" in out.stderr
    # the multiple-choice unit, generated before, is complete and kept
    units = Store(tmp_path / "st").units()
    assert [u.manifest["task"]["name"] for u in units if u.complete] == ["arc_easy"]
    u = next(u for u in units if u.complete)
    d = read_dist(u)
    # a vocabulary mismatch
    from dataclasses import replace

    with pytest.raises(ConfigError, match="vocabulary mismatch"):
        kl_pair(d, replace(d, vocab=d.vocab + 1))
    # a truncated, then a missing side file
    f = u.path / u.manifest["dist"]["file"]
    data = f.read_bytes()
    assert cli("verify", "--store", str(tmp_path / "st")).returncode == 0
    f.write_bytes(data[:-10])
    with pytest.raises(CorruptArtifactError, match="truncated"):
        read_dist(u)
    out = cli("verify", "--store", str(tmp_path / "st"))
    assert out.returncode != 0 and "dist.safetensors" in out.stderr + out.stdout
    f.unlink()
    with pytest.raises(CorruptArtifactError, match="missing"):
        read_dist(u)
    f.write_bytes(data)
    assert hashlib.sha256(f.read_bytes()).hexdigest() == u.manifest["dist"]["sha256"]
    # a header that does not describe its file (and a manifest rewritten to match it): named, never half-read,
    # whether a tensor does not fit, has the wrong number of dimensions, or the metadata is not an object
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["logprobs"]["shape"][0] += 1
    hb = json.dumps(header).encode()
    bad = len(hb).to_bytes(8, "little") + hb + data[8 + n :]
    f.write_bytes(bad)
    u.manifest["dist"].update(bytes=len(bad), sha256=hashlib.sha256(bad).hexdigest())
    with pytest.raises(CorruptArtifactError, match="'logprobs' does not fit the file"):
        read_dist(u)
    rows, cols = json.loads(data[8 : 8 + n])["logprobs"]["shape"]
    for change in ({"logprobs": {**header["logprobs"], "shape": [rows * cols]}},  # the same bytes, one dimension
                   {"positions": {**header["positions"], "shape": []}}, {"__metadata__": ["not", "an", "object"]}):
        hb = json.dumps({**json.loads(data[8 : 8 + n]), **change}).encode()
        bad = len(hb).to_bytes(8, "little") + hb + data[8 + n :]
        f.write_bytes(bad)
        u.manifest["dist"].update(bytes=len(bad), sha256=hashlib.sha256(bad).hexdigest())
        with pytest.raises(CorruptArtifactError, match="unreadable"):
            read_dist(u)


def test_dist_config_and_run_ids(tmp_path, shared_data):
    """dist enters a unit's run id only when it is set."""
    with pytest.raises(ValueError):
        DistConfig(positions={"every": 0})
    with pytest.raises(ValueError):
        DistConfig(format={"topk": 0})
    s = suite_file(tmp_path, shared_data, "null", "null")
    plain = plan_units(Store(tmp_path / "st"), load_suite(str(s)), [model(Path("fake"))])
    assert all("dist" not in p.resolved["task"] for p in plain)
    (tmp_path / "d").mkdir()
    s2 = suite_file(tmp_path / "d", shared_data, "{format: full}", "null")
    with_dist = plan_units(Store(tmp_path / "st"), load_suite(str(s2)), [model(Path("fake"))])
    assert with_dist[0].run_id != plain[0].run_id and with_dist[1].run_id == plain[1].run_id
    # the size budget is not part of a unit's identity
    budget = plan_units(Store(tmp_path / "st"), load_suite(str(s2), ["tasks.arc_easy.dist.max_bytes_per_unit=5"]),
                        [model(Path("fake"))])
    assert budget[0].run_id == with_dist[0].run_id


@pytest.mark.slow
def test_the_expected_size_is_shown_and_a_unit_over_the_budget_is_refused(tmp_path, tiny_model, shared_data):
    from rescore.gen.dist import bytes_per_position

    assert bytes_per_position(DistConfig(format={"topk": 64}), 50_000) <= 300
    s = suite_file(tmp_path, shared_data, "{format: full}", "{positions: {every: 4}, format: {topk: 4}}")
    base = ["gen", str(s), "--model", str(tiny_model), "--name", "tiny", "--device", "cpu", "--no-progress",
            "--store", str(tmp_path / "st")]
    out = cli(*base, "-O", "tasks.arc_easy.dist.max_bytes_per_unit=100000")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "over the 97.7 KiB per unit allowed" in out.stderr and "max_bytes_per_unit" in out.stderr
    assert not list((tmp_path / "st").glob("gen/*/rows.jsonl"))  # refused before anything was written
    out = cli(*base)
    assert out.returncode == 0, out.stderr
    units = {u.manifest["task"]["name"]: u for u in Store(tmp_path / "st").units()}
    want = units["arc_easy"].manifest["dist"]["positions"] * bytes_per_position(DistConfig(format="full"), 2048)
    assert f"at {units['arc_easy'].manifest['dist']['positions']:,} positions" in " ".join(out.stderr.split())
    assert want <= units["arc_easy"].manifest["dist"]["bytes"] <= want + 4096  # header and offsets


@pytest.mark.slow
def test_the_bench_runs_and_prints_bytes_per_position(tmp_path, tiny_model, shared_data):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "dist.py"), "--docs", "1", "--reps", "1",
                          "--max-length", "128", "--model-dir", str(tiny_model)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r"topk: 64: ([\d,]+) positions, ([\d.]+) bytes per position, .*overhead", out.stdout)
    assert m, out.stdout
    assert int(m.group(1).replace(",", "")) > 0 and float(m.group(2)) <= 300  # the size target holds exactly


def test_a_backend_that_stores_no_distributions_is_refused_before_anything_is_written(tmp_path):
    store = tmp_path / "st"
    out = cli("gen", "demo", "--model", "fake", "--store", str(store), "-t", "arc_easy", "--no-progress",
              "-O", "tasks.arc_easy.dist={format: full}")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "the fake backend does not store" in out.stderr
    assert not list(store.glob("gen/*/rows.*"))
    out = cli("gen", "demo", "--model", "fake", "--store", str(store), "-t", "arc_easy",
              "-O", "tasks.arc_easy.dist={positions: {every: 0}}")
    assert out.returncode == 2 and "positions is 'answer', 'all' or {every: N}" in out.stderr


@pytest.mark.slow  # over 5 s on 2 cores: the slow tier (CI runs it too)
def test_compare_with_a_glob_adds_no_distribution_rows_where_none_are_stored(tmp_path):
    store = str(tmp_path / "st")
    for m in ("step_1", "step_2"):
        assert cli("gen", "demo", "--backend", "fake", "--model", m, "--store", store, "-t", "arc_easy",
                   "--no-progress").returncode == 0
    assert cli("score", "--store", store).returncode == 0
    out = cli("compare", "--store", store, "--baseline", "step_1", "-M", "*", "-f", "json")
    assert out.returncode == 0, out.stderr
    metrics = {r["metric"] for r in json.loads(out.stdout)["rows"]}
    assert metrics and not metrics & {"kl", "kl_reverse", "dist_entropy", "dist_tail_mass", "dist_ece"}
