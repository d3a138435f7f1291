"""rescore report (HTML page) and the markdown results record, on a store built by the demo suite with the
fake backend: three checkpoints over two stages, two seeds on the sampled task."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from support import invoke

CHROMIUM = Path("/usr/bin/chromium")
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

MODELS = """models:
  - {name: bridge, path: fake, backend: fake, step: 0, stage: pretrain, options: {p_correct: 0.6}}
  - {name: sft, path: fake, backend: fake, step: 100, stage: sft, options: {p_correct: 0.3}}
  - {name: sft, path: fake, backend: fake, step: 200, stage: sft, options: {p_correct: 0.9}}
"""


def run(*args: str) -> Any:
    r = invoke(*args)
    assert r.exit_code == 0, f"rescore {' '.join(args)} -> {r.exit_code}\n{r.output}"
    return r


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    root = tmp_path_factory.mktemp("report")
    models = root / "models.yaml"
    models.write_text(MODELS)
    store = root / "store"
    run("gen", "demo", "--model", str(models), "--store", str(store), "--data-root", str(SHARED_DATA), "--no-progress")
    run("score", "--store", str(store), "--no-progress")
    return store


class Page(HTMLParser):
    """Collects what the assertions need: tags, attributes, table classes, figure data, text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.attrs: list[tuple[str, str, str]] = []
        self.tables: list[str] = []
        self.figures: list[tuple[str, str]] = []
        self.best_cells = 0
        self.ids: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        a = {k: v or "" for k, v in attrs}
        for k, v in a.items():
            self.attrs.append((tag, k, v))
        if tag == "table":
            self.tables.append(a.get("class", ""))
        if tag == "figure" and "plot" in a.get("class", ""):
            self.figures.append((a["data-task"], a["data-metric"]))
        if tag == "td" and "best" in a.get("class", ""):
            self.best_cells += 1
        if tag in ("h2", "h3") and "id" in a:
            self.ids.append(a["id"])

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(path: Path) -> tuple[Page, str]:
    src = path.read_text(encoding="utf-8")
    p = Page()
    p.feed(src)
    p.close()
    return p, src


def expected_plots(store: Path) -> set[tuple[str, str]]:
    """Every task/metric with a value in the results (counts excluded): each must have a plot."""
    rows = pq.read_table(store / "results.parquet").to_pylist()
    return {(r["task"], r["metric"]) for r in rows
            if r["seed"] == "agg" and r["subset"] == "all" and r["aggregator"] != "sum" and r["value"] is not None}


@pytest.fixture(scope="module")
def demo_report(demo_store: Path) -> Path:
    out = demo_store.parent / "sub" / "report.html"
    r = run("report", str(out), "--store", str(demo_store), "--title", "Stage bridge <check>")
    assert r.stdout.strip() == str(out)
    return out


def test_report_has_every_plot_and_table(demo_store: Path, demo_report: Path) -> None:
    page, src = parse(demo_report)
    want = expected_plots(demo_store)
    assert len(want) > 20
    assert set(page.figures) == want and len(page.figures) == len(want)
    assert page.tags["svg"] == len(want)  # one inline SVG per plot, nothing else
    assert {"summary", "bon", "tier4", "provenance"} <= set(page.tables)
    assert {"summary", "plots", "bon", "tier4", "provenance", "suite-demo"} <= set(page.ids)
    assert page.tables.count("tier4") == 2  # all_checks_pass_rate and instruction_match_rate by category
    text = " ".join(page.text)
    for needle in ("oracle - random", "max-logprob (mean)", "majority", "strict_json", "python_code",
                   "fingerprint", "bytes-v1", "fp32", "float32", "bridge@0", "sft@100", "sft@200",
                   "Generation commands"):
        assert needle in text, needle
    # the bridge (last checkpoint of the previous stage) is drawn on the sft panels
    assert "bridge (bridge@0)" in src and "stage sft" in src and "stage pretrain" in src
    assert page.best_cells > 0  # p_correct differs, so some columns have a best


def test_report_is_self_contained(demo_report: Path) -> None:
    page, src = parse(demo_report)
    assert "<title>Stage bridge &lt;check&gt;</title>" in src
    assert "script" not in page.tags and "link" not in page.tags and "img" not in page.tags
    for tag, attr, value in page.attrs:
        if attr in ("src", "href", "xlink:href"):
            assert value.startswith("#"), (tag, attr, value)  # in-page anchors only
    assert "@import" not in src and not re.search(r"url\((?!#)", src) and "<?xml" not in src and "<!DOCTYPE svg" not in src
    assert "<metadata>" not in src


def test_report_with_baseline_has_deltas_and_a_fixed_line(demo_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    run("report", str(out), "--store", str(demo_store), "--baseline", "sft@100", "-M", "acc*", "-M", "bon_*")
    page, src = parse(out)
    assert "deltas" in page.ids
    assert {m for _, m in page.figures} <= {"acc", "acc_norm", "acc_bytes", "acc_norm_tokens"} | {
        m for _, m in page.figures if m.startswith("bon_")}
    assert "bridge (sft@100)" in src and "bridge (bridge@0)" not in src


def test_report_refuses_mixed_precision(demo_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "mixed"
    shutil.copytree(demo_store, store)
    q = tmp_path / "q.yaml"
    q.write_text("models:\n  - {name: quant, path: fake, backend: fake, step: 200, stage: sft, precision: int8}\n")
    run("gen", "demo", "--model", str(q), "-t", "hellaswag", "--store", str(store), "--data-root", str(SHARED_DATA),
        "--no-progress")
    run("score", "--store", str(store), "--no-progress")
    out = tmp_path / "r.html"
    r = invoke("report", str(out), "--store", str(store))
    assert r.exit_code == 1 and not out.exists()
    assert "precision differs" in r.stderr and "quant@200" in r.stderr and "--allow-mixed" in r.stderr
    r = invoke("compare", "--store", str(store), "--baseline", "bridge", "-t", "hellaswag")
    assert r.exit_code == 1 and "int8: quant@200" in r.stderr
    run("report", str(out), "--store", str(store), "--allow-mixed", "-t", "hellaswag")
    page, src = parse(out)
    assert 'class="warn"' in src and "precision differs" in src and "quant@200" in src
    run("report", str(out), "--store", str(store), "-t", "hellaswag", "--models", "bridge", "--models", "sft")
    assert "quant@200" not in out.read_text()  # left out: nothing mixed, no refusal


def test_compare_on_the_demo_store(demo_store: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("policy:\n  rules:\n    - tier: tier2\n      max_rel_regression: 0.005\n"
                      "    - tier: tier3\n      no_material_regression: 0.05\n")
    r = invoke("compare", "--store", str(demo_store), "--baseline", "bridge", "--policy", str(policy),
               "--format", "json", "--resamples", "300")
    doc = json.loads(r.stdout)
    rows = doc["rows"]
    assert {row["model"] for row in rows} == {"sft@100", "sft@200"}
    # 8-item tasks: the CI is far wider than 0.05, so Tier3 cannot show "no material regression"
    assert any(row["tier"] == "tier3" and row["status"] == "fail" for row in rows)
    # the fake backend's perplexities do not depend on the model: Tier2 passes with a zero delta
    assert all(row["status"] == "pass" and row["delta"] == 0 for row in rows if row["tier"] == "tier2")
    assert r.exit_code == 1 and doc["passed"] is False
    gsm = [row for row in rows if row["task"] == "gsm8k_chat"]
    assert gsm and all(row["seeds"] == "0,1" for row in gsm)


def test_results_markdown_record(demo_store: Path) -> None:
    r = run("results", "--store", str(demo_store), "--format", "markdown")
    md = r.stdout
    assert md.count("| Task | Metric | Result | Error Range |") == 3
    for label in ("## bridge @ step 0", "## sft @ step 100", "## sft @ step 200", "## Comparison"):
        assert label in md
    assert md.count("model path `fake`, precision fp32") == 3
    assert md.count("run date 20") == 3 and md.count("; command `") == 3
    comparison = md.split("## Comparison", 1)[1]
    assert "| Task | Metric | bridge @ step 0 | sft @ step 100 | sft @ step 200 |" in comparison
    assert "**" in comparison


# Headless Chromium as root, offline: every request the browser makes goes to a closed loopback proxy port and
# no host name resolves, so nothing leaves the machine; the network log shows what the page asked for.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"]
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:", "chrome:", "chrome-error:")
# an attribute or CSS reference that a browser would fetch from another host
REMOTE_REF = re.compile(r"""(?:\b(?:src|href|srcset|poster|action|data|background)\s*=\s*["']?\s*|url\(\s*["']?\s*|@import\s+["']?)"""
                        r"(?:[a-z][a-z0-9+.-]*:)?//", re.I)


def chromium(page: str, tmp: Path, *flags: str) -> tuple[str, list[str]]:
    """Open ``page`` in headless Chromium with ``flags``; returns the dumped DOM and the URLs the page requested
    (the browser's own background requests, which belong to no page, are left out)."""
    exe = shutil.which("chromium") or str(CHROMIUM)
    netlog = tmp / "netlog.json"
    r = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", f"--log-net-log={netlog}",
                        "--dump-dom", *flags, page], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    text = netlog.read_text(encoding="utf-8").rstrip().rstrip(",")
    log = json.loads(text if text.endswith("}") else text + "]}")  # an unfinished log lacks its closing brackets
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = [e["params"]["url"] for e in log["events"]
            if e["type"] == start_job and "url" in e.get("params", {})
            and "file://" in e["params"].get("network_isolation_key", "")]  # requested by the file:// page
    return r.stdout, urls


class Plots(HTMLParser):
    """The plot figures of a DOM, each with the number of SVG shapes drawn inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: dict[tuple[str, str], int] = {}
        self.current: tuple[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "figure" and "plot" in a.get("class", ""):
            self.current = (a["data-task"], a["data-metric"])
            self.shapes[self.current] = 0
        elif self.current and tag in ("path", "polyline", "line", "circle", "use"):
            self.shapes[self.current] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self.current = None


def test_screenshot_in_headless_chromium(demo_store: Path, demo_report: Path, tmp_path: Path) -> None:
    """The report as a browser shows it: the page draws something, every plot is in the browser's DOM with its
    shapes, and the page requests nothing from the network."""
    if not (shutil.which("chromium") or CHROMIUM.exists()):
        if os.environ.get("RESCORE_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is not installed (`apt-get install -y chromium`)")
        pytest.skip("needs chromium (Debian package chromium)")
    from PIL import Image, ImageStat

    src = demo_report.read_text(encoding="utf-8")
    assert not REMOTE_REF.findall(src)
    shot = tmp_path / "shot.png"
    dom, requested = chromium(demo_report.as_uri() + "#plots", tmp_path / "report", "--window-size=1280,1600",
                              f"--screenshot={shot}")
    # not blank: the view at the plots holds dark text and colored plot marks and lines
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 1600)
    assert ImageStat.Stat(img.convert("L")).stddev[0] > 8
    hsv = img.convert("HSV")
    saturated = sum(hsv.getchannel("S").point(lambda s: 255 if s > 120 else 0).histogram()[255:])
    assert saturated > 500, saturated  # gray text and tables alone have none
    # every plot is in the DOM the browser built, and holds drawn shapes
    plots = Plots()
    plots.feed(dom)
    assert set(plots.shapes) == expected_plots(demo_store)
    assert all(n > 5 for n in plots.shapes.values()), {k: n for k, n in plots.shapes.items() if n <= 5}
    # nothing fetched from the network
    remote = [u for u in requested if not u.startswith(LOCAL_SCHEMES)]
    assert remote == [], remote
    # the same checks see a page that does reach out (a stylesheet, an image, an SVG image)
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<!doctype html><html><head><link rel="stylesheet" href="http://127.0.0.1:9/a.css"></head>'
                     '<body><img src="https://example.invalid/b.png"><svg><image href="http://192.0.2.1/c.svg"/>'
                     "</svg></body></html>", encoding="utf-8")
    assert len(REMOTE_REF.findall(leaky.read_text(encoding="utf-8"))) == 3
    _, leaked = chromium(leaky.as_uri(), tmp_path / "leaky")
    assert {u for u in leaked if not u.startswith(LOCAL_SCHEMES)} == {
        "http://127.0.0.1:9/a.css", "https://example.invalid/b.png", "http://192.0.2.1/c.svg"}, leaked
