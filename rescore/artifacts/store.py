"""The artifact store on disk (layout in the README and DESIGN.md).

``<store>/gen/<run_id>/`` holds one generation unit: ``manifest.json``, ``rows.jsonl`` while it is being
written (appended and fsynced per batch), ``rows.parquet`` once complete (written atomically), and
``.lock`` while a writer holds it. :class:`UnitWriter` is the only code that writes a unit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rescore.artifacts.integrity import (
    READ_ERRORS,
    ROWS_KEY,
    RUN_ID_KEY,
    corrupt,
    first_line,
    footer_checksum,
)
from rescore.artifacts.io import (
    read_json,
    sha256_file,
)
from rescore.errors import CorruptArtifactError, StoreError

MANIFEST = "manifest.json"
ROWS_JSONL = "rows.jsonl"
ROWS_PARQUET = "rows.parquet"
LOCK = ".lock"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class TornLineWarning(UserWarning):
    pass


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # rows.jsonl is appended to and truncated, never through a link


# Units whose manifest could not be read, left out by Store.units() in this process (path -> why). Every
# command that passes over a damaged unit must name it and fail: the CLI reports these after the command
# (rescore.commands.common.handle_errors), unless the command showed them itself (acknowledge_damaged).
PASSED_OVER: dict[str, str] = {}


def acknowledge_damaged(paths: Iterable[str | Path]) -> None:
    """The caller has shown these damaged units to the user (``status`` and ``ls`` list them as corrupt)."""
    for p in paths:
        PASSED_OVER.pop(str(p), None)


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.corrupt: list[tuple[Path, str]] = []
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"--store {self.root} is a file, not a store directory",
                             hint="pass the directory that holds gen/ and scores/ (or a new one)")

    @property
    def gen_dir(self) -> Path:
        return self.root / "gen"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def scores_dir(self) -> Path:
        return self.root / "scores"

    @property
    def results_path(self) -> Path:
        return self.root / "results.parquet"

    def exists(self) -> bool:
        return self.root.is_dir()

    def check_writable(self) -> Store:
        """Fail early (before any model loads) when the store cannot be written."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"--store {self.root} is a file, not a directory", hint="pass a directory path")
        probe = self.root if self.root.exists() else next((p for p in self.root.parents if p.exists()), Path("."))
        if not os.access(probe, os.W_OK):
            raise StoreError(f"cannot write to {probe}", hint="pass a --store directory you can write to")
        return self

    def unit_dir(self, run_id: str) -> Path:
        return self.gen_dir / _checked(run_id)

    def units(self) -> list[Unit]:
        """Every unit with a readable manifest. Units whose manifest cannot be read are left out and listed
        in :attr:`corrupt` (path, message), so one damaged unit never blocks the rest of the store."""
        self.corrupt = []
        if not self.gen_dir.is_dir():
            return []
        out = []
        for d in sorted(self.gen_dir.iterdir()):
            if d.is_dir() and (d / MANIFEST).is_file():
                try:
                    out.append(Unit(d))
                except CorruptArtifactError as e:
                    self.corrupt.append((d, e.message))
                    PASSED_OVER[str(d)] = e.message
        return out

    def unit(self, run_id: str) -> Unit:
        d = self.gen_dir / _checked(run_id)
        if not (d / MANIFEST).is_file():
            matches = [u for u in self.units() if u.run_id.startswith(run_id)] if run_id else []
            if len(matches) == 1:
                return matches[0]
            hint = "several units start with it; give more characters" if matches else "`rescore ls` lists the units"
            raise StoreError(f"no unit {run_id!r} in {self.root}", hint=hint)
        return Unit(d)


def _checked(run_id: str) -> str:
    if not run_id or not all(c in "0123456789abcdef" for c in run_id):
        raise StoreError(f"invalid run id {run_id!r}", hint="run ids are hexadecimal; `rescore ls` lists them")
    return run_id


_verified: dict[tuple[str, int, int], bool] = {}


class Unit:
    """A read-only view of one generation unit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.run_id = path.name
        self.manifest: dict[str, Any] = read_json(path / MANIFEST)
        if not isinstance(self.manifest, dict) or not isinstance(self.manifest.get("request_type"), str):
            raise CorruptArtifactError(f"{path / MANIFEST} is not a unit manifest (no request_type)",
                                       hint=f"delete {path} and regenerate the unit")

    @property
    def status(self) -> str:
        return str(self.manifest.get("status", "running"))

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def request_type(self) -> str:
        return str(self.manifest["request_type"])

    def rows_done(self) -> int:
        if self.complete:
            return int(self.manifest.get("rows_done", 0))
        p = self.path / ROWS_JSONL
        if not p.exists():
            return 0
        with open(p, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))

    def rows_total(self) -> int | None:
        t = self.manifest.get("rows_total")
        return int(t) if t is not None else None

    @property
    def parquet_path(self) -> Path:
        return self.path / ROWS_PARQUET

    def _damaged(self, why: str) -> CorruptArtifactError:
        return corrupt(self.parquet_path, why, hint=f"put the unit's own rows.parquet back, or delete {self.path} and "
                                                    "run `rescore gen` to regenerate the unit")

    def verify(self) -> None:
        """Check rows.parquet against the manifest's sha256 (cached per process by size and mtime)."""
        p = self.parquet_path
        self.check_rows_file()
        st = p.stat()
        key = (str(p), st.st_size, st.st_mtime_ns)
        if _verified.get(key):
            return
        expected = self.manifest.get("rows_parquet_sha256")
        if expected and sha256_file(p) != expected:
            raise self._damaged("it does not match the sha256 in its manifest (truncated, modified or replaced)")
        _verified[key] = True

    def check_rows_file(self) -> None:
        """The cheap checks made before every read of rows.parquet: it exists, and (units written since the
        manifest records them) its size and the CRC-32 of its footer are the manifest's. A file of another unit,
        an older version or a damaged footer is refused here, naming the file."""
        p = self.parquet_path
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise self._damaged("missing, but the manifest says the unit is complete") from None
        except OSError as e:
            raise self._damaged(f"unreadable ({first_line(e)})") from None
        want_size, want_footer = self.manifest.get("rows_parquet_bytes"), self.manifest.get("rows_parquet_footer")
        if want_size is None and want_footer is None:
            return  # written before these were recorded: the page CRCs or the sha256 check it
        try:
            footer = footer_checksum(p)
        except (OSError, ValueError) as e:
            raise self._damaged(f"unreadable ({first_line(e)})") from None
        if size != want_size or footer != want_footer:
            other = self._owner()
            if other is not None and other != self.run_id:
                raise self._damaged(f"it holds the rows of unit {other}, not of unit {self.run_id} (moved or copied "
                                    "between units)")
            if size != want_size:
                raise self._damaged(f"it has {size} bytes, its manifest says {want_size}: truncated, extended, or "
                                    "another version of the unit's rows")
            raise self._damaged("its footer does not match the CRC-32 in its manifest: damaged, or another version "
                                "of the unit's rows")

    def _owner(self) -> str | None:
        """The run id a rows.parquet names in its own metadata (None when it names none or cannot be read)."""
        try:
            kv = pq.read_metadata(self.parquet_path).metadata or {}
            return kv[RUN_ID_KEY].decode() if RUN_ID_KEY in kv else None
        except READ_ERRORS:
            return None

    def read_table(self, columns: Sequence[str] | None = None, *, verify: bool = True) -> pa.Table:
        """The unit's rows (``columns`` only). With ``verify``, the file is first checked to be this unit's
        (:meth:`check_rows_file`), then every page read is checked against its CRC. A unit written before its
        manifest recorded the file's size and footer (or before page CRCs) has its whole file checked against
        the manifest's sha256 instead, once per process. Damaged or misplaced data is an error naming the
        file, never partial or wrong data."""
        if not self.complete:
            raise StoreError(f"unit {self.run_id} is not complete (status {self.status})",
                             hint="finish it with `rescore gen` (it resumes) before reading it")
        pages = bool(self.manifest.get("page_checksums"))
        if verify:
            bound = "rows_parquet_bytes" in self.manifest
            self.check_rows_file() if pages and bound else self.verify()
        elif not self.parquet_path.is_file():
            raise self._damaged("missing, but the manifest says the unit is complete")
        try:
            # ParquetFile, not pq.read_table: the same reader without the dataset layer, whose first use
            # imports pandas (a fifth of a second in every fresh process, e.g. each scoring worker)
            with pq.ParquetFile(self.parquet_path, page_checksum_verification=verify and pages) as f:
                if verify:
                    self.check_bound(f.metadata)
                lacking = [c for c in columns or () if c not in f.schema_arrow.names]
                if lacking:  # ParquetFile.read would leave them out silently
                    raise self._damaged(f"it has no column(s) {lacking}: not a {self.request_type} unit's rows")
                return f.read(columns=list(columns) if columns is not None else None)
        except READ_ERRORS as e:
            raise self._damaged(f"unreadable ({first_line(e)})") from None

    def columns(self) -> list[str]:
        """The column names of the unit's rows, read from its checked footer."""
        self.check_rows_file()
        try:
            with pq.ParquetFile(self.parquet_path) as f:
                self.check_bound(f.metadata)
                return list(f.schema_arrow.names)
        except READ_ERRORS as e:
            raise self._damaged(f"unreadable ({first_line(e)})") from None

    def check_bound(self, md: pq.FileMetaData) -> None:
        """The file's own metadata names this unit (files written since it does) and the manifest's row count."""
        kv = md.metadata or {}
        owner = kv.get(RUN_ID_KEY)
        if owner is not None and owner != self.run_id.encode():
            raise self._damaged(f"it holds the rows of unit {owner.decode(errors='replace')}, not of unit "
                                f"{self.run_id} (moved or copied between units)")
        want = self.manifest.get("rows_done")
        if isinstance(want, int) and md.num_rows != want:
            raise self._damaged(f"it holds {md.num_rows} rows, its manifest says {want}")
        if ROWS_KEY in kv and kv[ROWS_KEY] != str(md.num_rows).encode():
            raise self._damaged(f"it holds {md.num_rows} rows, its own metadata says {kv[ROWS_KEY]!r}")

    def describe(self) -> str:
        m = self.manifest
        return f"{m.get('model', {}).get('name')} / {m.get('task', {}).get('name')} / seed {m.get('seed')}"


from rescore.artifacts.writer import (  # noqa: E402,F401  (re-exported: importable from the store as before)
    UnitWriter,
    dedupe_sort,
    environment_versions,
    nonfinite_to_null,
    read_jsonl_table,
    scan_jsonl,
    write_rows_parquet,
)
