"""The shipped suites' Hugging Face sources are complete, their revisions are commits, and the table in
docs/guides/stage-suite-sources.md names every dataset id and pinned revision (docs and suites cannot drift)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rescore.tasks.suites import list_suites, load_suite

DOC = Path(__file__).resolve().parents[1] / "docs" / "guides" / "stage-suite-sources.md"
COMMIT = re.compile(r"[0-9a-f]{40}")
SUITES = [name for name, _, _ in list_suites() if name.startswith("stage") or name == "gsm8k_chat"]


def _hf_tasks(suite: str) -> list:
    return [t for t in load_suite(suite).tasks if t.source is not None and t.source.hf]


def _doc_rows() -> list[str]:
    return [ln for ln in DOC.read_text().splitlines() if ln.startswith("| `")]


def test_the_stage_suites_are_shipped() -> None:
    assert {"stage1", "stage2", "stage3", "stage4", "gsm8k_chat"} <= set(SUITES)


@pytest.mark.parametrize("suite", SUITES)
def test_every_hub_source_is_complete(suite: str) -> None:
    tasks = _hf_tasks(suite)
    assert tasks
    for t in tasks:
        src = t.source
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", src.hf), (t.name, src.hf)
        assert src.split, t.name
        if t.family.startswith("ppl"):
            fields = t.params.get("text_fields") or [t.params.get("text_field", "text")]  # PPLParams default
            assert fields and all(isinstance(f, str) and f for f in fields), t.name
        elif t.family == "multiple_choice":
            assert t.params.get("prompt"), t.name
        if src.revision is not None:
            assert COMMIT.fullmatch(src.revision), (t.name, src.revision)


@pytest.mark.parametrize("suite", SUITES)
def test_docs_name_every_id_and_pinned_revision(suite: str) -> None:
    rows = _doc_rows()
    for t in _hf_tasks(suite):
        src = t.source
        mine = [r for r in rows if r.startswith(f"| `{src.hf}` |")]
        assert mine, f"{src.hf} ({suite}/{t.name}) is missing from {DOC.name}"
        if src.config_name:
            mine = [r for r in mine if f"`{src.config_name}`" in r.split("|")[2]]
            assert mine, f"{src.hf} config {src.config_name} ({suite}/{t.name}) is missing from {DOC.name}"
        if src.revision:
            assert any(f"`{src.revision}`" in r.split("|")[5] for r in mine), (
                f"{suite}/{t.name}: revision {src.revision} of {src.hf} is not in {DOC.name}")
        else:
            assert any("unpinned" in r.split("|")[5] for r in mine), (
                f"{suite}/{t.name}: {src.hf} is unpinned but {DOC.name} gives it a revision")


def test_every_revision_in_the_docs_is_pinned_in_a_suite() -> None:
    pinned = {t.source.revision for s in SUITES for t in _hf_tasks(s) if t.source.revision}
    in_doc = {m for r in _doc_rows() for m in re.findall(r"`([0-9a-f]{40})`", r.split("|")[5])}
    assert in_doc == pinned
