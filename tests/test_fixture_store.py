"""A finished store of each schema version is kept under tests/fixtures/: today's code must read and score it.

``store_v1`` is the `demo` suite on the fake backend (schema version 1); ``store_v1_results.json`` holds the
results its scores gave when it was written. A metric whose definition changes must bump its version, and
then this file is regenerated on purpose (see README, "Adding a metric").
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from rescore.artifacts.schema import SCHEMA_VERSION, schema_for
from rescore.artifacts.store import Store

FIXTURES = Path(__file__).parent / "fixtures"


def test_fixture_store_units_are_readable_with_todays_schema():
    store = Store(FIXTURES / "store_v1")
    units = store.units()
    assert len(units) == 7 and all(u.complete for u in units)
    for u in units:
        assert u.manifest["schema_version"] == 1 <= SCHEMA_VERSION
        table = u.read_table()
        assert table.schema.remove_metadata().equals(schema_for(u.request_type).remove_metadata())
        assert table.num_rows == u.manifest["rows_done"]


def test_rescoring_the_fixture_store_reproduces_its_results(tmp_path):
    store = tmp_path / "store_v1"
    shutil.copytree(FIXTURES / "store_v1", store)  # verify reads only, but keep the fixture pristine anyway
    out = subprocess.run([sys.executable, "-m", "rescore.cli", "verify", "--store", str(store), "--against",
                          str(FIXTURES / "store_v1_results.json"), "--json"], capture_output=True, text=True)
    diffs = json.loads(out.stdout) if out.stdout.strip().startswith("[") else []
    bad = [d for d in diffs if d["status"] in ("diff", "missing")]
    assert out.returncode == 0 and not bad, (bad[:5], out.stderr[-2000:])
    assert sum(d["status"] == "ok" for d in diffs) == len(json.load(open(FIXTURES / "store_v1_results.json")))
    assert not (store / "scores").exists(), "verify --against must not write into the store"
    assert pq.read_metadata(next((store / "gen").glob("*/rows.parquet"))).num_rows > 0
