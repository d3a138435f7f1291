"""Prepared task data: subsets, fingerprints, the store cache, offline errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rescore.tasks  # noqa: F401 - registers the families
from rescore.config import TaskConfig
from rescore.errors import CorruptArtifactError, MissingDataError
from rescore.tasks.common import subset_indices
from rescore.tasks.data import get_task_data, prepare_task


def arc_task(**kw) -> TaskConfig:
    base = dict(name="arc_easy", family="multiple_choice", source={"path": "arc_easy/arc_easy.jsonl"},
                subset_size=20, params={"prompt": "arc", "schema": "llm_foundry"})
    base.update(kw)
    return TaskConfig(**base)


def hf_task(**kw) -> TaskConfig:
    base = dict(name="arc_hf", family="multiple_choice",
                source={"hf": "allenai/ai2_arc", "config_name": "ARC-Easy", "split": "test"},
                subset_size=3, params={"prompt": "arc"})
    base.update(kw)
    return TaskConfig(**base)


def test_subset_is_deterministic_sorted_and_nested():
    a = subset_indices(1000, 50, 1234)
    assert a == subset_indices(1000, 50, 1234)
    assert a == sorted(a) and len(set(a)) == 50
    assert set(a) <= set(subset_indices(1000, 200, 1234))  # a larger subset contains a smaller one
    assert a != subset_indices(1000, 50, 99)
    assert subset_indices(10, None, 1) == list(range(10))
    assert subset_indices(10, 50, 1) == list(range(10))


def test_subset_rows_are_the_same_on_every_load(shared_data: Path, tmp_path: Path):
    d1 = get_task_data(tmp_path, arc_task(), data_root=shared_data)
    d2 = get_task_data(tmp_path / "other", arc_task(), data_root=shared_data)
    assert [r["_idx"] for r in d1.rows] == [r["_idx"] for r in d2.rows]
    assert len(d1.rows) == 20
    assert [r["_idx"] for r in d1.rows] == subset_indices(2376, 20, 1234)


def test_fingerprint_changes_with_what_decides_the_rows(shared_data: Path, tmp_path: Path):
    fp = get_task_data(tmp_path, arc_task(), data_root=shared_data).data_fp
    assert fp == get_task_data(tmp_path, arc_task(), data_root=shared_data).data_fp
    for changed in (arc_task(subset_size=21), arc_task(subset_seed=7),
                    arc_task(params={"prompt": "arc", "schema": "llm_foundry", "skip_duplicate_choices": True}),
                    arc_task(source={"path": "arc_challenge/arc_challenge.jsonl"})):
        assert get_task_data(tmp_path, changed, data_root=shared_data).data_fp != fp
    # the content of a local file is part of the fingerprint
    src = tmp_path / "copy" / "arc_easy"
    src.mkdir(parents=True)
    lines = (shared_data / "arc_easy" / "arc_easy.jsonl").read_text().splitlines()
    (src / "arc_easy.jsonl").write_text("\n".join(lines) + "\n")
    same = get_task_data(tmp_path, arc_task(), data_root=tmp_path / "copy").data_fp
    assert same == fp
    (src / "arc_easy.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert get_task_data(tmp_path, arc_task(), data_root=tmp_path / "copy").data_fp != fp


def test_prepare_writes_rows_and_meta_and_reads_them_back(shared_data: Path, tmp_path: Path):
    task = arc_task(num_fewshot=2, source={"path": "arc_easy/arc_easy.jsonl", "fewshot_path": "arc_challenge/arc_challenge.jsonl"})
    prepared = prepare_task(tmp_path, task, data_root=shared_data)
    d = tmp_path / "data" / "arc_easy" / prepared.data_fp
    assert (d / "rows.parquet").is_file() and (d / "meta.json").is_file()
    assert not list(d.glob("*.tmp"))
    meta = json.loads((d / "meta.json").read_text())
    assert meta["counts"] == {"source_rows": 2376, "rows": 20, "fewshot_rows": 1172}
    assert get_task_data(tmp_path, arc_task(source=task.source.model_dump()), data_root=shared_data).fewshot_rows == []
    assert meta["subset_size"] == 20 and meta["subset_seed"] == 1234 and meta["subset_rule"]
    assert len(meta["rows_sha256"]) == 64
    # gen reads the prepared copy even when the local files are gone (other machine, same store)
    again = get_task_data(tmp_path, task, data_root=tmp_path / "nowhere")
    assert again.path == d and again.rows == prepared.rows and again.fewshot_rows == prepared.fewshot_rows
    direct = get_task_data(tmp_path / "empty", task, data_root=shared_data)
    assert direct.path is None and direct.rows == prepared.rows and direct.data_fp == prepared.data_fp


def test_corrupt_prepared_rows_are_detected(shared_data: Path, tmp_path: Path):
    prepared = prepare_task(tmp_path, arc_task(), data_root=shared_data)
    rows = prepared.path / "rows.parquet"
    rows.write_bytes(rows.read_bytes()[:-20])
    with pytest.raises(CorruptArtifactError, match="rows.parquet"):
        get_task_data(tmp_path, arc_task(), data_root=shared_data)


def test_missing_local_file_names_the_path(tmp_path: Path):
    with pytest.raises(MissingDataError, match="arc_easy.jsonl"):
        get_task_data(tmp_path, arc_task(), data_root=tmp_path)


def test_hf_source_not_prepared_names_the_prepare_command(tmp_path: Path):
    with pytest.raises(MissingDataError) as e:
        get_task_data(tmp_path, hf_task(), suite="stage1")
    msg = e.value.render()
    assert f"rescore prepare stage1 --task arc_hf --store {tmp_path}" in msg
    assert "allenai/ai2_arc" in msg


def fake_hf(monkeypatch: pytest.MonkeyPatch, rows: list[dict], calls: list):
    import datasets

    def load_dataset(path, name=None, split=None, revision=None, streaming=False, **kw):
        calls.append((path, name, split, streaming))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)


ARC_HF_ROWS = [
    {"id": f"q{i}", "question": f"Question number {i}?", "choices": {"text": ["yes", "no", "maybe"], "label": ["A", "B", "C"]},
     "answerKey": "ABC"[i % 3]}
    for i in range(10)
]


def test_prepare_hf_then_run_offline_from_the_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    calls: list = []
    fake_hf(monkeypatch, ARC_HF_ROWS, calls)
    prepared = prepare_task(tmp_path, hf_task())
    assert calls == [("allenai/ai2_arc", "ARC-Easy", "test", False)]
    assert len(prepared.rows) == 3
    monkeypatch.setattr("datasets.load_dataset", lambda *a, **k: pytest.fail("gen must not load the dataset"))
    data = get_task_data(tmp_path, hf_task())
    assert data.rows == prepared.rows
    reqs = rescore.tasks.build_requests(hf_task(), data, None)
    assert reqs[0].contexts[0] == f"Question: Question number {data.rows[0]['_idx']}?\nAnswer:"
    assert reqs[0].continuations == (" yes", " no", " maybe")


def test_allow_direct_loads_an_hf_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    calls: list = []
    fake_hf(monkeypatch, ARC_HF_ROWS, calls)
    data = get_task_data(tmp_path, hf_task(), allow_direct=True)
    assert data.path is None and len(data.rows) == 3 and calls
    assert not (tmp_path / "data").exists()  # direct loading does not write the store


def test_offline_hf_load_is_a_missing_data_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(MissingDataError, match="could not load Hugging Face dataset 'allenai/ai2_arc'"):
        prepare_task(tmp_path, hf_task())


def test_unreachable_hub_reads_only_the_local_cache_and_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """An offline compute node without HF_HUB_OFFLINE: one quick probe instead of the Hub client's retries."""
    import datasets
    import huggingface_hub.constants as hub

    from rescore.tasks import sources

    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", *sources._PROXY_VARS):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens, refused at once
    monkeypatch.setattr(sources, "_hub_probe", {})
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    seen = []

    def load(*a, **k):
        seen.append(hub.HF_HUB_OFFLINE)
        raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", load)
    with pytest.raises(MissingDataError) as e:
        prepare_task(tmp_path, hf_task())
    assert seen == [True] and hub.HF_HUB_OFFLINE is False  # the local cache only, for that call only
    assert "unreachable from this machine (127.0.0.1:9:" in e.value.hint and "where the network is" in e.value.hint
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # behind a proxy: no probe, the client decides
    monkeypatch.setattr(sources, "_hub_probe", {})
    assert sources.hub_unreachable() is None


def test_fingerprint_follows_the_fewshot_pool_not_the_shot_count(shared_data: Path, tmp_path: Path):
    src = {"path": "arc_easy/arc_easy.jsonl", "fewshot_path": "arc_challenge/arc_challenge.jsonl"}
    fps = {k: get_task_data(tmp_path, arc_task(source=src, num_fewshot=k), data_root=shared_data).data_fp for k in (0, 3, 5)}
    assert fps[0] != fps[3] and fps[3] == fps[5]
