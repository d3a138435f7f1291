"""The typed unit manifest: older manifests load and write back byte for byte, producers are checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from rescore.artifacts.manifest import Manifest, checked_manifest
from rescore.errors import CorruptArtifactError, StoreError
from rescore.labels import CheckpointIdent, checkpoint_labels

FIXTURE_STORE = Path(__file__).parent / "fixtures" / "store_v1"


def _dumps(obj: object) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def test_fixture_store_manifests_load_typed_and_write_back_unchanged() -> None:
    paths = sorted(FIXTURE_STORE.glob("gen/*/manifest.json"))
    assert paths
    for p in paths:
        raw = orjson.loads(p.read_bytes())
        m = Manifest.load(raw, str(p))
        assert m.request_type == raw["request_type"]
        assert m.model.precision == raw["model"].get("precision") == m.precision
        assert m.task.name == raw["task"]["name"]
        assert _dumps(checked_manifest(m)) == _dumps(raw)


def test_unknown_keys_are_kept_and_import_is_an_alias() -> None:
    raw = {"request_type": "generate", "model": {"name": "m", "precision": "bf16", "future_key": [1, 2]},
           "import": {"kind": "jsonl", "checks": {"a": 1}}, "some_new_field": {"x": None}, "data_root": None}
    m = Manifest.load(raw)
    assert m.import_info is not None and m.import_info.kind == "jsonl"
    assert m.to_json() == raw  # only what was set, unknown keys included, nothing added


def test_a_malformed_manifest_names_its_field() -> None:
    with pytest.raises(StoreError, match=r"model\.step"):
        Manifest.build({"request_type": "generate", "model": {"step": "not a step"}})
    with pytest.raises(StoreError, match="request_type"):
        checked_manifest({"model": {}})
    with pytest.raises(CorruptArtifactError, match="seed"):
        Manifest.load({"request_type": "generate", "seed": [1]}, "x/manifest.json")


def test_checkpoint_labels() -> None:
    a = CheckpointIdent("sft", 100, "bf16", "/a")
    assert checkpoint_labels([a, CheckpointIdent("sft", 200, "bf16", "/b")]) == ["sft@100", "sft@200"]
    assert checkpoint_labels([CheckpointIdent("stage1-step300", 300)]) == ["stage1-step300"]
    assert checkpoint_labels([a], spaced=True) == ["sft @ step 100"]
    # several units of one checkpoint share its label; precision, then path, tell checkpoints apart
    assert checkpoint_labels([a, a, CheckpointIdent("sft", 100, "fp32", "/a")]) == [
        "sft@100[bf16]", "sft@100[bf16]", "sft@100[fp32]"]
    assert checkpoint_labels([a, CheckpointIdent("sft", 100, "bf16", "/c")]) == [
        "sft@100[bf16][/a]", "sft@100[bf16][/c]"]


def test_a_manifest_of_the_wrong_types_is_named_not_a_traceback(tmp_path: Path) -> None:
    import shutil

    from tests.support import cli

    store = tmp_path / "store"
    shutil.copytree(FIXTURE_STORE, store)
    path = sorted(store.glob("gen/*/manifest.json"))[0]
    raw = orjson.loads(path.read_bytes())
    raw["model"]["step"] = "not a step"
    path.write_bytes(orjson.dumps(raw))
    status = cli("status", "--store", store)
    assert "corrupt" in status.stdout and "Traceback" not in status.stderr, status.stdout + status.stderr
    report = cli("report", tmp_path / "r.html", "--store", store)
    assert report.returncode != 0 and "Traceback" not in report.stderr
    assert f"{path} is not a unit manifest (model.step:" in report.stderr


def test_a_unit_resumes_only_with_the_weights_it_started_with() -> None:
    from types import SimpleNamespace

    from rescore.gen.runner import check_same_model

    plan: Any = SimpleNamespace(run_id="r" * 20, label="m / t / seed 0")
    started = {"request_type": "generate", "model": {"fingerprint": "a" * 64, "tokenizer_hash": "t1", "path": "/m"}}
    same = Manifest.build({"request_type": "generate", "model": {"fingerprint": "a" * 64, "path": "/m"}})
    check_same_model(started, same, plan)
    check_same_model(None, same, plan)
    changed = Manifest.build({"request_type": "generate", "model": {"fingerprint": "b" * 64, "path": "/m"}})
    with pytest.raises(StoreError, match="fingerprint was aaaaaaaaaaaaaaaa, now it is bbbbbbbbbbbbbbbb"):
        check_same_model(started, changed, plan)


def test_the_writer_refuses_to_write_a_malformed_manifest(tmp_path) -> None:
    """UnitWriter checks every manifest it writes against the typed model: a producer out of step with it stops
    with the field named, and nothing of the unit is written."""
    import pytest

    from rescore.artifacts.store import Store, UnitWriter
    from rescore.errors import StoreError

    st = Store(tmp_path / "store")
    bad = {"run_id": "abcdef0123456789abcd", "request_type": "loglikelihood", "status": "running", "seed": "zero"}
    with pytest.raises(StoreError, match="seed"):
        with UnitWriter(st, "abcdef0123456789abcd", bad):
            pass
    assert not (st.gen_dir / "abcdef0123456789abcd" / "manifest.json").exists()
