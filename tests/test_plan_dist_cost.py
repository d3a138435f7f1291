"""`rescore plan` shows what the stored distributions of the units to run will take (a task's ``dist``), the
size `gen` prints when the unit starts, and flags a unit over ``dist.max_bytes_per_unit`` with the message
`gen` refuses it with."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from support import ARC_EASY, WIKI_PAGES, invoke, write_suite

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rescore.artifacts.store import Store  # noqa: E402
from rescore.errors import ConfigError  # noqa: E402
from rescore.gen.dist import human_bytes  # noqa: E402
from rescore.gen.runner import Progress, run_units  # noqa: E402
from rescore.plan.backfill import plan_matrix  # noqa: E402
from rescore.plan.matrix import load_matrix  # noqa: E402


def write_matrix(tmp: Path, shared: Path, tiny: Path) -> Path:
    (tmp / "ck" / "s1").mkdir(parents=True)
    (tmp / "ck" / "s1" / "step_1").symlink_to(tiny)
    write_suite(tmp / "suite.yaml", shared, [
        {**ARC_EASY, "subset_size": 6, "dist": {"format": {"topk": 8}}},
        {**WIKI_PAGES, "subset_size": 1, "dist": {"positions": "all", "format": "full", "max_bytes_per_unit": 1000}},
        {**WIKI_PAGES, "name": "wiki_plain", "subset_size": 1},
    ], name="distsuite")
    p = tmp / "matrix.yaml"
    p.write_text(textwrap.dedent(f"""
        name: m
        backend: hf
        precision: fp32
        model: {{device: cpu, batch_size: 4, max_length: 64}}
        suites: [{tmp / 'suite.yaml'}]
        stages:
          - name: s1
            path: {tmp / 'ck'}/s1/step_{{step}}
            steps: [1]
    """))
    return p


class Messages(Progress):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


@pytest.mark.slow  # loads the tiny model's tokenizer and runs one unit
def test_plan_shows_the_distribution_size_gen_prints_and_flags_a_unit_gen_refuses(tmp_path, tiny_model, shared_data):
    matrix = write_matrix(tmp_path, shared_data, tiny_model)
    store = tmp_path / "st"
    out = invoke("plan", str(matrix), "--store", str(store), "--json")
    assert out.exit_code == 0, out.output
    rows = {r["task"]: r for r in json.loads(out.stdout)["units"]}
    assert "dist_bytes" not in rows["wiki_plain"]  # no dist, no cost
    arc, wiki = rows["arc_easy"], rows["wiki"]
    assert arc["dist_positions"] > 0 and arc["dist_bytes"] > 0 and arc["dist_problem"] is None
    assert wiki["dist_bytes"] > 1000 and "over the 1,000 B per unit allowed" in wiki["dist_problem"]

    table = invoke("plan", str(matrix), "--store", str(store))
    assert table.exit_code == 0, table.output
    assert human_bytes(arc["dist_bytes"]) in table.stdout and "refused" in table.stdout
    assert f"gen would refuse: {wiki['dist_problem']}" in " ".join(table.stdout.split())

    # gen: the same size for the unit it runs, the same message for the unit it refuses
    units = {u.plan.task.name: u.plan for u in plan_matrix(Store(store), load_matrix(matrix), source=str(matrix))}
    prog = Messages()
    run_units(Store(store), [units["arc_easy"]], progress=prog)
    assert any(line.endswith(f"at {arc['dist_positions']:,} positions: about {human_bytes(arc['dist_bytes'])}")
               for line in prog.lines), prog.lines
    with pytest.raises(ConfigError) as e:
        run_units(Store(store), [units["wiki"]])
    assert e.value.message == wiki["dist_problem"]
