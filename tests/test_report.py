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
    """Collects what the assertions need: tags, attributes, table classes and column counts, figures (task,
    metrics) with their subplots and SVG texts, text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.attrs: list[tuple[str, str, str]] = []
        self.tables: list[str] = []
        self.columns: list[tuple[str, str, int]] = []  # (class, data-task, columns of the header row)
        self.figures: list[tuple[str, tuple[str, ...]]] = []
        self.kinds: list[str] = []
        self.subplots: list[int] = []  # per figure: matplotlib axes drawn in its SVG
        self.svg_texts: list[list[str]] = []  # per figure: its SVG's text elements
        self.best_cells = 0
        self.ids: list[str] = []
        self.text: list[str] = []
        self.in_figure = self.in_svg_text = self.in_head_row = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        a = {k: v or "" for k, v in attrs}
        for k, v in a.items():
            self.attrs.append((tag, k, v))
        if tag == "table":
            self.tables.append(a.get("class", ""))
            self.columns.append((a.get("class", ""), a.get("data-task", ""), 0))
        if tag == "tr" and self.columns and self.columns[-1][2] == 0:
            self.in_head_row = True
        if tag == "th" and self.in_head_row:
            cls, task, n = self.columns[-1]
            self.columns[-1] = (cls, task, n + int(a.get("colspan", "1")))
        if tag == "figure" and "plot" in a.get("class", "").split():
            self.figures.append((a["data-task"], tuple(a["data-metrics"].split())))
            self.kinds.append(a["class"])
            self.subplots.append(0)
            self.svg_texts.append([])
            self.in_figure = True
        if self.in_figure and tag == "g" and re.fullmatch(r"axes_\d+", a.get("id", "")):
            self.subplots[-1] += 1
        if self.in_figure and tag == "text":
            self.svg_texts[-1].append("")
            self.in_svg_text = True
        if tag == "td" and "best" in a.get("class", ""):
            self.best_cells += 1
        if tag in ("h2", "h3") and "id" in a:
            self.ids.append(a["id"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self.in_figure = False
        if tag == "text":
            self.in_svg_text = False
        if tag == "tr":
            self.in_head_row = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.in_svg_text:
            self.svg_texts[-1][-1] += data


def parse(path: Path) -> tuple[Page, str]:
    src = path.read_text(encoding="utf-8")
    p = Page()
    p.feed(src)
    p.close()
    return p, src


def expected_plots(store: Path) -> dict[str, set[str]]:
    """Every task with a value in the results (counts excluded), with its metrics: each task of the demo store
    (steps 0, 100 and 200) must have one figure with one subplot per metric."""
    rows = pq.read_table(store / "results.parquet").to_pylist()
    out: dict[str, set[str]] = {}
    for r in rows:
        if r["seed"] == "agg" and r["subset"] == "all" and r["aggregator"] != "sum" and r["value"] is not None:
            out.setdefault(r["task"], set()).add(r["metric"])
    return out


@pytest.fixture(scope="module")
def demo_report(demo_store: Path) -> Path:
    out = demo_store.parent / "sub" / "report.html"
    r = run("report", str(out), "--store", str(demo_store), "--title", "Stage bridge <check>")
    assert r.stdout.strip() == str(out)
    return out


def test_report_has_every_plot_and_table(demo_store: Path, demo_report: Path) -> None:
    page, src = parse(demo_report)
    want = expected_plots(demo_store)
    assert sum(map(len, want.values())) > 20
    # one figure per task, one subplot per metric, every metric named once as a subplot title
    assert sorted(t for t, _ in page.figures) == sorted(want)
    for (task, metrics), n_axes, texts in zip(page.figures, page.subplots, page.svg_texts, strict=True):
        assert set(metrics) == want[task] and len(metrics) == len(want[task])
        assert n_axes == len(metrics), (task, n_axes, metrics)
        titles = [t.rsplit(" ", 1)[0] for t in texts if t.endswith((" ↑", " ↓"))]
        assert sorted(titles) == sorted(metrics), task
        # each stage and the bridge named once per figure (in its legend), not on every subplot
        assert texts.count("stage sft") == 1 and texts.count("stage pretrain") == 1, task
        assert texts.count("bridge (bridge@0)") == 1 and texts.count(task) == 1, task
    assert page.tags["svg"] == len(want)  # one inline SVG per figure, nothing else
    assert "note-steps" not in src  # every task spans three steps
    assert {"summary", "bon", "tier4", "provenance"} <= set(page.tables)
    assert {"summary", "plots", "bon", "tier4", "provenance", "suite-demo"} <= set(page.ids)
    assert page.tables.count("tier4") == 2  # all_checks_pass_rate and instruction_match_rate by category
    text = "".join(page.text)  # as a reader sees it: a <wbr> in a long header breaks no word
    for needle in ("oracle - random", "max-logprob (mean)", "majority", "strict_json", "python_code",
                   "fingerprint", "bytes-v1", "fp32", "float32", "bridge@0", "sft@100", "sft@200",
                   "Generation commands"):
        assert needle in text, needle
    assert page.best_cells > 0  # p_correct differs, so some columns have a best


LONG = "a-checkpoint-name-long-enough-to-need-wrapping-in-every-table-of-the-report"


@pytest.fixture(scope="module")
def two_step_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """arc_easy at steps 100 and 200; hellaswag only at step 100."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    root = tmp_path_factory.mktemp("steps")
    store = root / "store"
    for name, step, tasks in ((LONG, 100, ("arc_easy", "hellaswag")), ("later", 200, ("arc_easy",))):
        models = root / f"{name}.yaml"
        models.write_text(f"models:\n  - {{name: {name}, path: fake, backend: fake, step: {step}, stage: sft}}\n")
        run("gen", "demo", "--model", str(models), "--store", str(store), "--data-root", str(SHARED_DATA),
            "--no-progress", *(a for t in tasks for a in ("-t", t)))
    run("score", "--store", str(store), "--no-progress")
    return store


def test_step_plots_only_where_a_task_has_two_steps(two_step_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    run("report", str(out), "--store", str(two_step_store))
    page, src = parse(out)
    want = expected_plots(two_step_store)
    assert [t for t, _ in page.figures] == ["arc_easy"]  # hellaswag has one step: no figure
    assert set(page.figures[0][1]) == want["arc_easy"] and page.subplots == [len(want["arc_easy"])]
    notes = re.findall(r'<p class="muted note-steps">(.*?)</p>', src)
    assert notes == ["Not plotted (metric-vs-step plots need at least two steps): hellaswag (step 100)."]
    assert "1 metric-vs-step figures" in src
    # names are never cut: the long name is whole in the summary and the provenance (the page wraps it)
    text = " ".join(page.text)
    assert text.count(LONG + "@100") >= 3  # summary tables of both tasks, provenance


def test_a_single_checkpoint_draws_no_step_plots(two_step_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    run("report", str(out), "--store", str(two_step_store), "--models", LONG)
    page, src = parse(out)
    assert page.figures == [] and "svg" not in page.tags
    notes = re.findall(r'<p class="muted note-steps">(.*?)</p>', src)
    assert notes == ["No plots: metric-vs-step plots need at least two steps, and the only checkpoint is at step 100."]
    assert "0 metric-vs-step figures" in src
    assert {t for cls, t, _ in page.columns if cls == "summary"} == {"arc_easy", "hellaswag"}


def test_tick_labels_carry_no_offset() -> None:
    """Perplexities near 1e8 differing in the last digits: matplotlib's default would draw a "1e8" offset
    above the axis (where it collides with the subplot title); the report's ticks are whole numbers instead."""
    import matplotlib.ticker

    from rescore.report import plots

    sub = plots.Subplot(title="word_perplexity ↓", series={"stage a": [
        plots.Point(step=s, value=1e8 + 10 * i, spread=None, n_seeds=1) for i, s in enumerate((0, 100, 200))]})

    def texts() -> list[str]:
        svg = plots.step_figure([sub], title="t", salt="x")
        return re.findall(r"<text[^>]*>([^<]*)</text>", svg)

    def offsets(ts: list[str]) -> list[str]:
        return [t for t in ts if re.search(r"\de[+−-]?\d|×10|^[+−]", t)]

    got = texts()
    assert offsets(got) == [], got
    ticks = [float(t) for t in got if re.fullmatch(r"\d{9}", t)]
    assert len(ticks) >= 3 and len(set(ticks)) == len(ticks) and min(ticks) <= 1e8 + 10 <= max(ticks)
    default = plots.PlainFormatter
    try:  # the check sees matplotlib's own formatter's offset
        plots.PlainFormatter = matplotlib.ticker.ScalarFormatter  # type: ignore[misc]
        assert offsets(texts()) != []
    finally:
        plots.PlainFormatter = default  # type: ignore[misc]


MAX_COLUMNS = 12  # a table of 12 columns of "0.6250 ± 0.1830" fits a 1400 px window


def test_summary_is_one_narrow_table_per_task(demo_store: Path, demo_report: Path) -> None:
    page, src = parse(demo_report)
    want = expected_plots(demo_store)
    summary = [(task, n) for cls, task, n in page.columns if cls == "summary"]
    assert {t for t, _ in summary} == set(want)
    assert max(n for _, n in summary) <= MAX_COLUMNS
    for cls, _, n in page.columns:  # nor any other table of numbers
        if cls in ("bon", "tier4"):
            assert n <= MAX_COLUMNS, (cls, n)
    # a task of 11 metrics is split in two tables of 6 and 5, every metric in one of them
    gsm = [n for t, n in summary if t == "gsm8k_chat"]
    assert len(want["gsm8k_chat"]) == 11 and sorted(gsm) == [2 + 5, 2 + 6]
    assert "gsm8k_chat (1/2)" in src and "gsm8k_chat (2/2)" in src
    for task, metrics in want.items():
        for m in metrics:
            assert re.search(rf"<th>{re.escape(m).replace('_', '_(?:<wbr>)?')} [↑↓]</th>", src), (task, m)
    # the provenance table wraps within the page instead of running off its right edge
    assert '<table class="provenance"><colgroup>' in src and "table.provenance{table-layout:fixed;width:100%}" in src


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
    drawn = {m for _, ms in page.figures for m in ms}
    assert drawn and drawn <= {"acc", "acc_norm", "acc_bytes", "acc_norm_tokens"} | {m for m in drawn if m.startswith("bon_")}
    assert "bridge (sft@100)" in src and "bridge (bridge@0)" not in src
    # one baseline for every stage: one gray line, named once per figure
    assert all(texts.count("bridge (sft@100)") == 1 for texts in page.svg_texts)


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
    """The plot figures of a DOM (by task), each with the number of SVG shapes drawn inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: dict[str, int] = {}
        self.current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "figure" and "plot" in a.get("class", ""):
            self.current = a["data-task"]
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
    want = expected_plots(demo_store)
    assert set(plots.shapes) == set(want)
    assert all(n > 5 * len(want[t]) for t, n in plots.shapes.items()), plots.shapes  # marks on every subplot
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


# run in the browser on a copy of the page: what a reader at 1400 px would have to scroll sideways for
MEASURE = r"""<script>addEventListener("load", () => {
  const W = innerWidth, out = {window: W, page: document.documentElement.scrollWidth, wide: []};
  for (const el of document.querySelectorAll("table, figure, .wrap, .tables, pre")) {
    const r = el.getBoundingClientRect();
    if (r.right > W + 0.5 || el.scrollWidth > el.clientWidth + 1) out.wide.push(el.tagName + "." + el.className);
  }
  out.broken = [];  // provenance headers split inside a word
  for (const th of document.querySelectorAll("table.provenance th")) {
    const text = th.firstChild, words = text ? text.textContent.matchAll(/\S+/g) : [];
    for (const w of words) {
      const r = document.createRange(); r.setStart(text, w.index); r.setEnd(text, w.index + w[0].length);
      if (new Set([...r.getClientRects()].map(x => Math.round(x.top))).size > 1) out.broken.push(w[0]);
    }
  }
  const probe = document.createElement("div");  // the measure itself sees a page that is too wide
  probe.style.width = "2000px"; probe.style.height = "1px"; document.body.append(probe);
  out.probed = document.documentElement.scrollWidth; probe.remove();
  const pre = document.createElement("pre"); pre.id = "measured"; pre.textContent = JSON.stringify(out);
  document.body.append(pre);
});</script>"""


def needs_chromium() -> None:
    if not (shutil.which("chromium") or CHROMIUM.exists()):
        if os.environ.get("RESCORE_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is not installed (`apt-get install -y chromium`)")
        pytest.skip("needs chromium (Debian package chromium)")


def measure_at_1400(report: Path, tmp: Path) -> dict[str, Any]:
    """The page in a 1400 px window: its scroll width and the elements wider than the window or their box."""
    page = tmp / "measure.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    dom, _ = chromium(page.as_uri(), tmp / "measure", "--window-size=1400,1000", "--virtual-time-budget=10000")
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    got: dict[str, Any] = json.loads(found.group(1).replace("&quot;", '"'))
    assert got["window"] == 1400
    assert got["probed"] >= 2000  # the measure sees a page that overflows
    return got


def test_page_fits_a_1400px_window_in_headless_chromium(demo_report: Path, tmp_path: Path) -> None:
    """Nothing on the page is wider than a 1400 px window, no table scrolls sideways inside its box, and the
    provenance table's headers are whole words."""
    needs_chromium()
    got = measure_at_1400(demo_report, tmp_path)
    assert got["page"] <= 1400, got
    assert got["wide"] == [], got["wide"]
    assert got["broken"] == [], got["broken"]


@pytest.mark.slow  # 24 checkpoints to generate and score: about 10 s
def test_a_long_matrix_with_long_names_fits_a_1400px_window(tmp_path: Path) -> None:
    """Two stages of 12 checkpoints with long names and paths: one figure per task, tables that grow down
    rather than sideways, and a page no wider than the window."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    needs_chromium()
    lines = ["models:"]
    for stage in ("stage1-pretraining-with-a-long-context-window", "stage2-supervised-finetuning"):
        for k in range(1, 13):
            lines.append(f"  - {{name: {stage}-step{k * 2500}, backend: fake, step: {k * 2500}, stage: {stage}, "
                         f"path: /checkpoints/of/a/rather/deep/tree/{stage}/global_step_{k * 2500}/huggingface_export}}")
    models = tmp_path / "m.yaml"
    models.write_text("\n".join(lines) + "\n")
    store = tmp_path / "store"
    run("gen", "demo", "--model", str(models), "--store", str(store), "--data-root", str(SHARED_DATA), "--no-progress",
        "-t", "arc_easy", "-t", "sft_native", "-t", "wikitext2_docs")
    run("score", "--store", str(store), "--no-progress")
    out = tmp_path / "r.html"
    run("report", str(out), "--store", str(store))
    page, src = parse(out)
    want = expected_plots(store)
    assert sorted(t for t, _ in page.figures) == sorted(want)
    assert page.subplots == [len(want[t]) for t, _ in page.figures]
    assert max(n for cls, _, n in page.columns if cls in ("summary", "tier4")) <= MAX_COLUMNS
    got = measure_at_1400(out, tmp_path)
    assert got["page"] <= 1400, got
    assert got["wide"] == [], got["wide"]
