"""``rescore prepare SUITE --check``: every Hugging Face source resolved against what the Hub says, no data read.

The Hub itself is out of reach here, so these tests replace the one object that talks to it (a resolver with
the Hub's answers) and check what is reported; the offline refusal runs the real command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from support import cli, invoke

from rescore.config import TaskConfig


class FakeHub:
    """The Hub's answers for a few datasets (what huggingface_hub and datasets would return)."""

    DATA: dict[str, dict[str, Any]] = {
        "org/plain": {"sha": "a" * 40, "gated": False, "configs": {"default": (["train", "test"], ["text", "id"])},
                      "dirs": {"correct": ["validation"]}},
        "org/multi": {"sha": "b" * 40, "gated": False,
                      "configs": {"en": (["validation"], ["text"]), "de": (["validation"], ["text"])}},
        "org/gated": {"sha": "c" * 40, "gated": True, "configs": {"default": (["train"], None)}},
    }

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def dataset(self, repo: str, revision: str | None) -> tuple[str | None, bool]:
        self.calls.append(("dataset", repo, revision))
        if repo not in self.DATA:
            raise LookupError(f"Dataset '{repo}' does not exist on the Hub")
        if revision not in (None, "main", self.DATA[repo]["sha"]):
            raise LookupError(f"Invalid rev id: {revision}")
        return self.DATA[repo]["sha"], self.DATA[repo]["gated"]

    def configs(self, repo: str, revision: str | None) -> list[str]:
        self.calls.append(("configs", repo, revision))
        return list(self.DATA[repo]["configs"])

    def splits(self, repo: str, config: str | None, revision: str | None, data_dir: str | None = None) -> list[str]:
        self.calls.append(("splits", repo, config, revision))
        if data_dir is not None:  # a folder of the repository: only the splits its files give
            return self.DATA[repo].get("dirs", {}).get(data_dir, [])
        return self.DATA[repo]["configs"][config or "default"][0]

    def columns(self, repo: str, config: str | None, revision: str | None) -> list[str] | None:
        self.calls.append(("columns", repo, config, revision))
        return self.DATA[repo]["configs"][config or "default"][1]


def _task(name: str, **src: Any) -> dict[str, Any]:
    params = src.pop("params", {"seq_len": 16, "target_tokens": 30})
    return {"name": name, "family": "ppl_packed", "source": src, "params": params}


TASKS = [
    _task("pinned", hf="org/plain", split="test", revision="a" * 40, params={"seq_len": 16, "target_tokens": 30, "text_field": "text"}),
    _task("unpinned", hf="org/plain", split="test"),
    _task("no_config", hf="org/multi", config_name="fr", split="validation"),
    _task("unnamed_config", hf="org/multi", split="validation"),
    _task("no_split", hf="org/plain", split="validation"),
    _task("no_field", hf="org/plain", split="test", params={"seq_len": 16, "target_tokens": 30, "text_field": "content"}),
    _task("gated", hf="org/gated", split="train"),
    _task("missing", hf="org/none", split="test"),
    _task("bad_revision", hf="org/plain", split="test", revision="nope"),
    _task("local", path="x.txt", format="txt"),
]


def test_each_problem_is_named_per_task_and_the_hub_is_asked_once_per_dataset() -> None:
    from rescore.tasks.source_check import check_task

    hub, cache = FakeHub(), {}
    reps = {t["name"]: check_task(TaskConfig(**t), hub, cache) for t in TASKS}
    assert reps["local"] is None
    assert reps["pinned"].ok and not reps["pinned"].notes and reps["pinned"].resolved == "a" * 40
    assert reps["unpinned"].ok and "no revision pinned (now aaaa" in reps["unpinned"].notes[0]
    assert reps["no_config"].problems == ["no config 'fr' (configs: en, de)"]
    assert "set source.config_name to one of en, de" in reps["unnamed_config"].problems[0]
    assert reps["no_split"].problems == ["no split 'validation' (splits: train, test)"]
    assert reps["no_field"].problems == ["no column 'content' (columns: text, id)"]
    assert reps["gated"].ok and reps["gated"].gated and "hf auth login" in reps["gated"].notes[0]
    assert reps["missing"].problems == ["not found or not readable: LookupError: Dataset 'org/none' does not exist on the Hub"]
    assert reps["bad_revision"].problems == ["not found or not readable: LookupError: Invalid rev id: nope"]
    assert len(hub.calls) == len(set(hub.calls))  # one question per dataset and revision, however many tasks use it
    assert hub.calls.count(("configs", "org/plain", None)) == 1


def test_prepare_check_prints_a_row_per_source_and_exits_1_on_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rescore.tasks.source_check as sc

    monkeypatch.setattr(sc, "live_hub", FakeHub)
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"name": "s", "tasks": TASKS}), encoding="utf-8")
    store = tmp_path / "store"
    r = invoke("prepare", str(suite), "--store", str(store), "--check", terminal_width=400)
    assert r.exit_code == 1, r.output
    for text in ("no config 'fr'", "no split 'validation'", "no column 'content'", "org/none", "6 of 9 sources have problems"):
        assert text in r.output
    assert "no_config: org/multi: no config 'fr' (configs: en, de)" in r.output.splitlines()
    assert "unpinned: org/plain: note: no revision pinned" in r.output
    assert "local" not in r.output.split("Hugging Face sources")[1].split("sources have problems")[0]
    assert not store.exists()  # nothing written, no data read
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump({"name": "ok", "tasks": TASKS[:2]}), encoding="utf-8")
    r = invoke("prepare", str(ok), "--store", str(store), "--check", terminal_width=400)
    assert r.exit_code == 0, r.output
    assert "ok" in r.output and not store.exists()


def test_prepare_check_offline_is_one_line() -> None:
    r = cli("prepare", "stage1", "--check", env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) <= 2 and "set offline" in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_a_source_can_name_a_folder_of_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    """``data_dir``: the split is read from one folder of the repository (a repository holding correct and
    incorrect solutions as two validation files); --check asks for that folder's splits, the loader passes it
    to datasets, and a source without it keeps the identity it always had."""
    from rescore.gen.runner import task_identity_exclude
    from rescore.tasks import sources
    from rescore.tasks.data import data_key
    from rescore.tasks.source_check import check_task

    plain = TaskConfig.model_validate(_task("t", hf="org/plain", split="validation"))
    folder = TaskConfig.model_validate(_task("t", hf="org/plain", split="validation", data_dir="correct"))
    assert "data_dir" not in plain.model_dump(mode="json")["source"]
    assert "data_dir" not in plain.model_dump(mode="json", exclude=task_identity_exclude(plain))["source"]
    assert data_key(plain) != data_key(folder)
    assert check_task(folder, FakeHub()).problems == []
    assert check_task(plain, FakeHub()).problems == ["no split 'validation' (splits: train, test)"]
    wrong = TaskConfig.model_validate(_task("t", hf="org/plain", split="test", data_dir="correct"))
    assert check_task(wrong, FakeHub()).problems == ["no split 'test' (splits: validation)"]

    import datasets

    seen: dict[str, Any] = {}
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: seen.update(args=a, kwargs=k) or [{"text": "x"}])
    monkeypatch.setattr(sources, "hub_unreachable", lambda: None)
    assert list(sources.iter_hf(folder.source, "validation")) == [{"text": "x"}]
    assert seen["kwargs"]["data_dir"] == "correct" and seen["args"] == ("org/plain", None)
    list(sources.iter_hf(plain.source, "validation"))
    assert "data_dir" not in seen["kwargs"]
    with pytest.raises(ValueError, match="data_dir applies to a Hugging Face dataset"):
        TaskConfig.model_validate({"name": "t", "family": "ppl_packed", "source": {"path": "x.jsonl", "data_dir": "a"}})
