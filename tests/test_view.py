"""``rescore view``: the per-sample viewer, its embedded data, its bad input, and the page in a real browser."""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from support import invoke
from test_report import CHROMIUM, LOCAL_SCHEMES, REMOTE_REF, chromium

MODELS = """models:
  - {name: bridge, path: fake, backend: fake, step: 0, stage: pretrain, options: {p_correct: 0.95}}
  - {name: sft, path: fake, backend: fake, step: 100, stage: sft, options: {p_correct: 0.05}}
"""
TASKS = "hellaswag,arc_easy,gsm8k_chat,wikitext2_docs"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("view")
    (root / "models.yaml").write_text(MODELS)
    store = root / "store"
    r = invoke("gen", "demo", "--model", str(root / "models.yaml"), "--store", str(store), "--no-progress", "-t", TASKS)
    assert r.exit_code == 0, r.output
    assert invoke("score", "--store", str(store), "--no-progress").exit_code == 0
    return store


@pytest.fixture(scope="module")
def page(store: Path) -> Path:
    out = store.parent / "view.html"
    r = invoke("view", str(out), "--store", str(store), "--baseline", "bridge", "--against", "sft@100")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == str(out)
    return out


def embedded(path: Path) -> dict[str, Any]:
    m = re.search(r'<script id="data" type="application/octet-stream">([^<]*)</script>', path.read_text(encoding="utf-8"))
    assert m is not None
    return json.loads(gzip.decompress(base64.b64decode(m.group(1))))


def test_the_page_embeds_every_sample_with_its_values_details_and_flips(store: Path, page: Path) -> None:
    from rescore.artifacts.store import Store
    from rescore.score.engine import read_results

    d = embedded(page)
    assert d["checkpoints"] == ["bridge@0", "sft@100"] and d["flips"] == [0, 1]
    tasks = {t["name"]: t for t in d["tasks"]}
    assert set(tasks) == set(TASKS.split(","))
    st = Store(store)
    hs = tasks["hellaswag"]
    unit = next(u for u in st.units() if u.manifest["task"]["name"] == "hellaswag" and u.manifest["model"]["name"] == "bridge")
    rows = unit.read_table().to_pylist()
    assert [s["id"] for s in hs["samples"]] == sorted(r["sample_id"] for r in rows)
    by_id = {r["sample_id"]: r for r in rows}
    for i, s in enumerate(hs["samples"]):
        r = by_id[s["id"]]
        assert s["gold"] == r["gold"] and s["choices"] == r["choices"]
        assert hs["detail"][0][i]["ll"] == [round(x, 4) for x in r["choice_sum_logprob"]]
    # the per-sample values average to what the results table holds
    res = {(x["model"], x["task"], x["metric"]): x["value"] for x in read_results(st).to_pylist()
           if x["seed"] == "agg" and x["subset"] == "all"}
    for ck, name in enumerate(("bridge", "sft")):
        vals = hs["values"][ck]["acc"]
        assert sum(vals) / len(vals) == pytest.approx(res[(name, "hellaswag", "acc")])
    # a generation's candidates carry seed, finish reason, tokens and their logprobs
    g = tasks["gsm8k_chat"]
    cand = g["detail"][0][0]["c"][0]
    assert cand["f"] in ("stop", "length", "eos") and len(cand["tok"]) == len(cand["lp"]) > 0 and cand["top"]
    assert g["samples"][0]["msgs"][0]["role"] == "user"
    w = tasks["wikitext2_docs"]["detail"][0][0]["worst"]
    assert len(w) == 12 and [x[2] for x in w] == sorted(x[2] for x in w)  # the least likely tokens, lowest first


def flips(d: dict[str, Any], task: str) -> tuple[set[str], set[str]]:
    t = next(x for x in d["tasks"] if x["name"] == task)
    a, b = t["values"][0][t["primary"]], t["values"][1][t["primary"]]
    worse = {s["id"] for s, x, y in zip(t["samples"], a, b, strict=True) if None not in (x, y) and y < x}
    better = {s["id"] for s, x, y in zip(t["samples"], a, b, strict=True) if None not in (x, y) and y > x}
    return worse, better


def test_bad_input_is_one_line(store: Path, tmp_path: Path) -> None:
    for args, code, says in (
        (["--store", str(tmp_path / "none")], 1, "no generation units"),
        (["--store", str(store), "--baseline", "bridge"], 2, "--against"),
        (["--store", str(store), "--baseline", "bridge", "--against", "bridge@0"], 2, "the same checkpoint"),
        (["--store", str(store), "--baseline", "bridge", "--against", "nosuch"], 2, "no checkpoint matches"),
        (["--store", str(store), "--task", "nosuch"], 2, "nosuch"),
    ):
        r = invoke("view", str(tmp_path / "v.html"), *args)
        assert r.exit_code == code, (args, r.output)
        assert says in r.output and "Traceback" not in r.output, (args, r.output)
        assert not (tmp_path / "v.html").exists()


class Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[str] = []
        self.gold: list[str] = []
        self.worse: list[str] = []
        self.better: list[str] = []
        self.sample: str | None = None
        self.view: str | None = None
        self._list: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        cls = a.get("class", "").split()
        if tag == "main":
            self.view = a.get("data-view")
        if tag == "tr" and "sample" in cls:
            self.rows.append(a["data-id"])
        if tag == "tr" and "choice" in cls and "gold" in cls:
            self.gold.append(a["data-k"])
        if tag == "div" and a.get("id") == "sample":
            self.sample = a["data-id"]
        if tag == "ul" and cls and cls[0] in ("worse", "better"):
            self._list = cls[0]
        if tag == "li" and self._list:
            getattr(self, self._list).append(a["data-id"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "ul":
            self._list = None


def open_page(page: Path, fragment: str, tmp: Path) -> Dom:
    dom, requested = chromium(page.as_uri() + "#" + fragment, tmp, "--virtual-time-budget=10000")
    assert [u for u in requested if not u.startswith(LOCAL_SCHEMES)] == []  # nothing from the network
    parsed = Dom()
    parsed.feed(dom)
    return parsed


def test_in_a_browser_the_table_a_sample_a_filter_and_the_flips(page: Path, tmp_path: Path) -> None:
    if not (shutil.which("chromium") or CHROMIUM.exists()):
        if os.environ.get("RESCORE_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is not installed (`apt-get install -y chromium`)")
        pytest.skip("needs chromium (Debian package chromium)")
    assert not REMOTE_REF.findall(page.read_text(encoding="utf-8"))
    d = embedded(page)
    hs = next(t for t in d["tasks"] if t["name"] == "hellaswag")
    ids = [s["id"] for s in hs["samples"]]
    table = open_page(page, "task=hellaswag", tmp_path / "a")
    assert table.view == "table" and table.rows == ids
    first = hs["samples"][0]
    sample = open_page(page, f"task=hellaswag&sample={first['id']}", tmp_path / "b")
    assert sample.view == "sample" and sample.sample == first["id"] and sample.gold == [str(first["gold"])]
    # the filter a user sets: incorrect on sft@100
    acc = hs["values"][1]["acc"]
    wrong = [s for s, v in zip(ids, acc, strict=True) if v is not None and v <= 0]
    filtered = open_page(page, "task=hellaswag&ck=1&res=incorrect", tmp_path / "c")
    assert filtered.rows == wrong and 0 < len(wrong) < len(ids)
    worse, better = flips(d, "hellaswag")
    fl = open_page(page, "task=hellaswag&view=flips", tmp_path / "d")
    assert fl.view == "flips" and set(fl.worse) == worse and set(fl.better) == better and worse


def test_the_page_is_written_readable_like_the_report(page: Path) -> None:
    """Written atomically through a private temporary file, the page ends with the usual mode of a shared file."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert page.stat().st_mode & 0o777 == 0o666 & ~umask
