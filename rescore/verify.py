"""Integrity checks of a store: checksums, schemas, orphaned and leftover files.

``check_store`` reads every manifest, verifies each complete unit's rows.parquet against the sha256 in
its manifest (whole file), the unit it names and the Arrow schema of its request type, scans partial units'
rows.jsonl, reads every score file and results.parquet whole against their checksums, and lists what does
not belong: unit directories without a manifest, score directories whose unit is gone, temporary files left
by an interrupted atomic write, and locks of dead processes. Damaged score files are dropped from their
unit's score index, so the next ``score`` recomputes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow.parquet as pq

from rescore.artifacts.integrity import READ_ERRORS, first_line, read_sealed_parquet
from rescore.artifacts.io import read_json, sha256_file
from rescore.artifacts.lock import is_stale
from rescore.artifacts.schema import SCHEMA_VERSION, schema_for, stores_dist
from rescore.artifacts.store import LOCK, MANIFEST, ROWS_JSONL, ROWS_PARQUET, Store, Unit, scan_jsonl
from rescore.errors import CorruptArtifactError, UserError


@dataclass(frozen=True)
class Finding:
    kind: str  # corrupt | schema | orphaned | leftover | stale-lock | partial
    path: str
    detail: str

    @property
    def is_error(self) -> bool:
        return self.kind in ("corrupt", "schema", "orphaned")


def check_store(store: Store) -> tuple[list[Finding], int]:
    """(findings, number of units checked)."""
    if not store.root.is_dir():
        raise UserError(f"no store at {store.root}", hint="pass --store DIR (or set RESCORE_STORE)")
    out: list[Finding] = []
    n = 0
    gen = store.gen_dir
    units: set[str] = set()
    for d in sorted(gen.iterdir()) if gen.is_dir() else []:
        if not d.is_dir():
            out.append(Finding("orphaned", str(d), "not a unit directory"))
            continue
        units.add(d.name)
        n += 1
        out += check_unit(d)
    for base in (store.scores_dir,):
        for d in sorted(base.iterdir()) if base.is_dir() else []:
            if d.is_dir() and d.name not in units:
                out.append(Finding("orphaned", str(d), "scores of a unit that is not in gen/"))
            elif d.is_dir():
                out += check_scores(d)
    for p in sorted(store.root.rglob(".*.tmp")):
        out.append(Finding("leftover", str(p), "temporary file of an interrupted write (safe to delete)"))
    out += check_prepared(store)
    out += check_results(store)
    return out, n


def check_results(store: Store) -> list[Finding]:
    """results.parquet read whole against its page CRCs and content checksum (a damaged one is rebuilt by
    the next `score`, or by the next command that reads it)."""
    from rescore.score.engine import check_results as read_whole

    if not store.results_path.is_file():
        return []
    try:
        read_whole(store)
    except CorruptArtifactError as e:
        return [Finding("corrupt", str(store.results_path), f"{getattr(e, 'why', e.message)}; `rescore score` "
                                                            "rebuilds it from the score files")]
    return []


def check_scores(d: Path) -> list[Finding]:
    """Every score file of a unit read whole, against its checksum (they are a cache: a damaged one is
    dropped from the unit's score index, so the next `score` recomputes it)."""
    from rescore.score.engine import check_score_file, forget_score_files, score_files

    out = []
    damaged = []
    for p in sorted(d / n for n in score_files(d)):
        meta, why = check_score_file(p)
        if meta is None:
            damaged.append(p.name)
            out.append(Finding("corrupt", str(p), f"score file {why}; the next `rescore score` recomputes it"))
    if damaged:
        forget_score_files(d, damaged)
    return out


def check_unit(d: Path) -> list[Finding]:
    out: list[Finding] = []
    mpath = d / MANIFEST
    if not mpath.is_file():
        return [Finding("orphaned", str(d), "unit directory without manifest.json")]
    try:
        m = read_json(mpath)
    except UserError as e:
        return [Finding("corrupt", str(mpath), e.message)]
    rt = m.get("request_type")
    try:
        schema = schema_for(rt, dist=stores_dist(m))
    except ValueError:
        return [Finding("corrupt", str(mpath), f"unknown request_type {rt!r}")]
    if m.get("schema_version") != SCHEMA_VERSION:
        out.append(Finding("schema", str(mpath), f"schema_version {m.get('schema_version')} (this rescore writes "
                                                  f"{SCHEMA_VERSION})"))
    lock = d / LOCK
    if lock.exists():
        if is_stale(lock):
            out.append(Finding("stale-lock", str(lock), "lock of a process that is gone (reclaimed by the next gen)"))
    if m.get("status") != "complete":
        try:
            done = len(scan_jsonl(d / ROWS_JSONL, repair=False))
        except UserError as e:
            return out + [Finding("corrupt", str(d / ROWS_JSONL), e.message)]
        out.append(Finding("partial", str(d), f"{done}/{m.get('rows_total', '?')} rows; `rescore gen` resumes it"))
        return out
    pq_path = d / ROWS_PARQUET
    if not pq_path.is_file():
        return out + [Finding("corrupt", str(pq_path), "missing, but the manifest says complete")]
    try:
        unit = Unit(d)
        unit.check_rows_file()  # the checks of every read first: they say whose rows a misplaced file holds
    except CorruptArtifactError as e:
        return out + [Finding("corrupt", str(pq_path), getattr(e, "why", e.message))]
    if m.get("rows_parquet_sha256") and sha256_file(pq_path) != m["rows_parquet_sha256"]:
        return out + [Finding("corrupt", str(pq_path), "sha256 differs from the manifest (truncated or modified)")]
    try:
        meta = pq.read_metadata(pq_path)
        got = pq.read_schema(pq_path)
        unit.check_bound(meta)
    except CorruptArtifactError as e:
        return out + [Finding("corrupt", str(pq_path), getattr(e, "why", e.message))]
    except READ_ERRORS as e:
        return out + [Finding("corrupt", str(pq_path), f"unreadable: {first_line(e)}")]
    if not got.remove_metadata().equals(schema.remove_metadata()):
        diff = sorted(set(map(str, schema)) ^ set(map(str, got)))[:3]
        out.append(Finding("schema", str(pq_path), f"columns differ from the {rt} schema: {diff}"))
    if meta.num_rows != m.get("rows_done"):
        out.append(Finding("corrupt", str(pq_path), f"{meta.num_rows} rows, manifest says {m.get('rows_done')}"))
    if (d / ROWS_JSONL).exists():
        out.append(Finding("leftover", str(d / ROWS_JSONL), "log of a complete unit (safe to delete)"))
    if "dist" in m:  # the stored distributions: size, sha256, bound to the unit and its rows
        from rescore.artifacts.tensors import read_dist

        try:
            read_dist(unit)
        except CorruptArtifactError as e:
            out.append(Finding("corrupt", getattr(e, "path", str(d)), getattr(e, "why", e.message)))
    return out


def check_prepared(store: Store) -> list[Finding]:
    out: list[Finding] = []
    if not store.data_dir.is_dir():
        return out
    for meta_path in sorted(store.data_dir.glob("*/*/meta.json")):
        d = meta_path.parent
        try:
            meta = read_json(meta_path)
        except UserError as e:
            out.append(Finding("corrupt", str(meta_path), e.message))
            continue
        rows = d / "rows.parquet"
        if not rows.is_file():
            out.append(Finding("corrupt", str(rows), "prepared rows missing"))
        elif meta.get("rows_sha256") and sha256_file(rows) != meta["rows_sha256"]:
            out.append(Finding("corrupt", str(rows), "sha256 differs from meta.json (truncated or modified)"))
        for cache in sorted(d.glob("windows-*.parquet")):  # packed perplexity windows: a cache, checked like one
            try:
                read_sealed_parquet(cache, "")
            except CorruptArtifactError as e:
                out.append(Finding("corrupt", str(cache), f"{getattr(e, 'why', e.message)}; the next `rescore gen` "
                                                          "that needs it rebuilds it"))
    return out


# -- rescoring reproduces an earlier results file --------------------------------------------------------------

RESULT_KEY = ("model", "step", "task", "subset", "metric", "seed")


@dataclass(frozen=True)
class Diff:
    key: tuple
    old: float | None
    new: float | None
    status: str  # ok | diff | missing (in the new scores) | new (not in the old file)

    @property
    def abs_diff(self) -> float | None:
        if self.old is None or self.new is None:
            return None
        return abs(self.new - self.old)


def load_results_file(path: Path) -> list[dict]:
    """Rows of an earlier results file: ``results.parquet``, or ``rescore results --format json`` output."""
    if not path.is_file():
        raise UserError(f"results file not found: {path}", hint="pass a results.parquet or `rescore results --format json` output")
    try:
        if path.suffix == ".parquet":  # page CRCs and the content checksum of a results.parquet are verified
            data = read_sealed_parquet(path, "pass an undamaged copy of the results file").to_pylist()
        else:
            data = orjson.loads(path.read_bytes())
    except (orjson.JSONDecodeError, OSError) as e:
        raise UserError(f"cannot read results file {path}: {e}", hint="pass results.parquet or a JSON list of result rows") from None
    rows = data.get("results") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"{path} is not a list of result rows", hint="write it with `rescore results --format json`")
    if not rows:  # a check of nothing would pass
        raise UserError(f"{path} holds no result rows: there is nothing to reproduce",
                        hint="pass a results file with rows (`rescore results --format json --seed '*' --subset '*'`)")
    missing = [k for k in RESULT_KEY + ("value",) if rows and k not in rows[0]]
    if missing:
        raise UserError(f"{path}: result rows lack {missing}", hint="write it with `rescore results --format json`")
    return rows


def _key(r: dict) -> tuple:
    return tuple(str(r.get(k)) if r.get(k) is not None else None for k in RESULT_KEY)


def rescore_into_temp(store: Store) -> list[dict]:
    """Score every unit from scratch in a scratch store that links to this store's units: the store's own
    score cache and results are not touched."""
    import shutil
    import tempfile

    from rescore.score.engine import build_results, score_store, select_metrics

    specs = select_metrics() + parameterised_specs(store)
    tmp = Path(tempfile.mkdtemp(prefix="rescore-verify-"))
    try:
        (tmp / "gen").symlink_to(store.gen_dir.resolve(), target_is_directory=True)
        scratch = Store(tmp)
        score_store(scratch, specs, force=True, rebuild=False)
        return build_results(scratch).to_pylist()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parameterised_specs(store: Store) -> list:  # type: ignore[type-arg]
    """The parameterised variants the store was scored with (``--metric pass_at_k:k=2`` -> ``pass_at_2``),
    rebuilt from their score files' metadata, so rescoring reproduces them too."""
    from rescore.errors import ConfigError
    from rescore.score.engine import scan_scores
    from rescore.score.registry import load_builtin
    from rescore.score.spec import derived_name, metrics

    load_builtin()
    registered = {n: metrics.get(n) for n in metrics.names()}
    out: dict[str, object] = {}
    for unit in store.units():
        for meta in scan_scores(store, unit.run_id).values():
            name, params = meta.get("metric"), meta.get("params") or {}
            if name in registered or name in out or not isinstance(params, dict):
                continue
            for base in registered.values():
                diff = {k: v for k, v in params.items() if base.kw.get(k) != v}
                if diff and derived_name(base.name, diff) == name and meta.get("version") == base.version:
                    try:
                        out[name] = base.with_params(**diff)
                    except ConfigError:
                        pass
                    break
    return list(out.values())


def compare_results(old: list[dict], new: list[dict], tolerance: float) -> list[Diff]:
    new_by = {_key(r): r.get("value") for r in new}
    out: list[Diff] = []
    seen = set()
    for r in old:
        k = _key(r)
        seen.add(k)
        a = r.get("value")
        if k not in new_by:
            out.append(Diff(k, a, None, "missing"))
            continue
        b = new_by[k]
        if a is None or b is None:
            status = "ok" if a is None and b is None else "diff"
        else:
            status = "ok" if abs(b - a) <= tolerance * max(1.0, abs(a)) else "diff"
        out.append(Diff(k, a, b, status))
    out += [Diff(k, None, v, "new") for k, v in new_by.items() if k not in seen]
    return out
