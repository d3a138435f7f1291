"""Units of several models run model by model: each model loads once, whatever order the plans are in."""

from __future__ import annotations

from pathlib import Path

from rescore.artifacts.store import Store
from rescore.config import ModelConfig
from rescore.gen.base import make_backend
from rescore.gen.runner import plan_units, run_units
from rescore.tasks.suites import load_suite


def test_each_model_loads_once_for_all_its_units(tmp_path: Path, shared_data: Path) -> None:
    suite_file = tmp_path / "s.yaml"
    suite_file.write_text(f"""
name: two
data_root: {shared_data}
seeds: [0, 1]
tasks:
  - name: arc_easy
    family: multiple_choice
    source: {{path: arc_easy/arc_easy.jsonl, split: test}}
    subset_size: 3
    params: {{prompt: arc, schema: llm_foundry}}
  - name: arc_easy_two
    family: multiple_choice
    source: {{path: arc_easy/arc_easy.jsonl, split: test}}
    subset_size: 2
    params: {{prompt: arc, schema: llm_foundry}}
""")
    suite = load_suite(str(suite_file))
    models = [ModelConfig(name=n, path="fake", backend="fake") for n in ("a", "b")]
    store = Store(tmp_path / "store")
    plans = plan_units(store, suite, models, data_root=shared_data)
    # interleave the models on purpose: a, b, a, b, ...
    plans = sorted(plans, key=lambda p: (p.task.name, p.model.name))
    assert [p.model.name for p in plans[:2]] == ["a", "b"]
    loads: list[str] = []

    def factory(m: ModelConfig):
        loads.append(m.name)
        return make_backend(m)

    results = run_units(store, plans, backend_factory=factory)
    assert sorted(loads) == ["a", "b"]
    assert [r.plan.run_id for r in results] == [p.run_id for p in plans]  # reported in the order given
    assert len(plans) >= 4 and len(store.units()) == len(plans)
