"""Checks that every read of a store file makes, so damaged or misplaced data is an error naming the file,
never a value.

- Files the store derives (``results.parquet``, score files, cached perplexity windows) are *sealed*: their
  own metadata (:data:`CHECKSUM_KEY`: the Parquet footer's key-value metadata, the Arrow IPC schema's) holds
  the CRC-32 of every byte of the file, computed with the checksum's own value written as
  :data:`PLACEHOLDER`. A read loads the file's bytes, checks the seal, then decodes those same bytes, so a
  flipped bit anywhere (data, footer, schema, metadata, padding) fails the read. The CRC runs over the
  compressed bytes: it costs a fraction of decompressing them.
- A unit's ``rows.parquet`` is too large to hash on every read: it has Parquet page CRCs (every page read is
  checked), its footer's CRC-32 and its size are in the manifest, and its own key-value metadata names its
  unit and row count (:data:`RUN_ID_KEY`, :data:`ROWS_KEY`), so a file of another unit or an older version
  is refused before anything is read from it. ``rescore verify`` hashes the whole file (sha256, manifest).

Files written before these checks existed carry none of them and are read as before.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rescore.errors import CorruptArtifactError

CHECKSUM_KEY = b"rescore.checksum"
RUN_ID_KEY = b"rescore.run_id"
ROWS_KEY = b"rescore.rows"
PLACEHOLDER = b"crc32:00000000"  # the seal's value while the file is hashed (same length as every value)

# what a damaged Parquet or Arrow file can raise inside pyarrow: its errors, OSError, and errors of the
# Python layer that decodes names and metadata (UnicodeDecodeError is a ValueError)
READ_ERRORS: tuple[type[BaseException], ...] = (pa.ArrowException, OSError, ValueError, TypeError, KeyError,
                                                IndexError, OverflowError, MemoryError, EOFError)


def corrupt(path: str | Path, why: str, hint: str) -> CorruptArtifactError:
    """The one error for a store file that cannot be trusted (``.path`` and ``.why`` hold its parts)."""
    e = CorruptArtifactError(f"corrupt file {path}: {why}", hint=hint)
    e.path, e.why = str(path), why  # type: ignore[attr-defined]
    return e


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def crc32(data: Any, value: int = 0) -> int:
    return zlib.crc32(data, value)


# -- sealed files ------------------------------------------------------------------------------------------
def seal(data: Any) -> bytes:
    """The bytes of a file written with ``PLACEHOLDER`` as its checksum's value, with the value filled in."""
    raw = bytes(data)
    n = raw.count(PLACEHOLDER)
    assert n, "the file holds no checksum placeholder"
    return raw.replace(PLACEHOLDER, f"crc32:{crc32(raw):08x}".encode())


def seal_holds(data: bytes, claimed: bytes | None) -> bool:
    """Whether ``data`` matches the checksum its metadata ``claimed`` (no claim: a file from before seals)."""
    if claimed is None:
        return True
    if len(claimed) != len(PLACEHOLDER) or not claimed.startswith(b"crc32:") or claimed == PLACEHOLDER:
        return False
    return f"crc32:{crc32(data.replace(claimed, PLACEHOLDER)):08x}".encode() == claimed


def without_seal(table: pa.Table) -> pa.Table:
    meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != CHECKSUM_KEY}
    return table.replace_schema_metadata(meta or None)


def sealed_parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as a sealed Parquet file (zstd, page CRCs)."""
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, compression="zstd", write_page_checksum=True) as w:
        w.write_table(table)
        w.add_key_value_metadata({CHECKSUM_KEY: PLACEHOLDER})  # in the footer only, not in the stored Arrow schema
    return seal(sink.getvalue())


def write_sealed_parquet(path: str | Path, table: pa.Table, *, root: str | Path | None = None) -> None:
    """Write a derived table as a sealed Parquet file, atomically (see :func:`read_sealed_parquet`)."""
    from rescore.artifacts.io import atomic_write_bytes

    atomic_write_bytes(path, sealed_parquet_bytes(table), root=root)


def read_file_buffer(path: str | Path, limit: int | None = None) -> pa.Buffer:
    """A file's bytes (its first ``limit`` bytes) in memory that Arrow owns. Decode from this, never from a
    Python ``bytes``: Arrow's worker threads can drop their last reference to the source after the command
    has returned, and releasing a Python object from there while the interpreter exits aborts the process
    ("terminate called without an active exception"; most often with OMP_NUM_THREADS=1)."""
    with pa.OSFile(str(path)) as f:
        return f.read_buffer(limit)


def read_sealed_parquet(path: str | Path, hint: str) -> pa.Table:
    """A Parquet file the store wrote, its seal and every page CRC verified (a file from before seals has its
    page CRCs verified). Any damage is a :class:`CorruptArtifactError` naming ``path``; the seal is not part
    of the table returned."""
    try:
        buf = read_file_buffer(path)
        with pq.ParquetFile(pa.BufferReader(buf), page_checksum_verification=True) as f:
            if not seal_holds(buf.to_pybytes(), (f.metadata.metadata or {}).get(CHECKSUM_KEY)):
                raise corrupt(path, "its bytes do not match the checksum in its footer (damaged on disk)", hint)
            table = f.read()
    except READ_ERRORS as e:
        raise corrupt(path, f"unreadable ({first_line(e)})", hint) from None
    return without_seal(table)


# -- a unit's rows.parquet ---------------------------------------------------------------------------------
def parquet_footer(data_or_path: bytes | bytearray | str | Path) -> bytes:
    """The raw footer of a Parquet file (its metadata, then its length and the magic), from the file's bytes
    or by reading only the end of the file at a path."""
    if isinstance(data_or_path, bytes | bytearray):
        data = data_or_path
        tail = data[-8:]
        n = int.from_bytes(tail[:4], "little") if len(data) >= 12 and tail[4:] == b"PAR1" else -1
        if n < 0 or n > len(data) - 12:
            raise ValueError("not a Parquet file (no footer)")
        return bytes(data[-8 - n:])
    with open(data_or_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 12:
            raise ValueError(f"{size} bytes: too short for a Parquet file")
        f.seek(size - 8)
        tail = f.read(8)
        n = int.from_bytes(tail[:4], "little")
        if tail[4:] != b"PAR1" or n > size - 12:
            raise ValueError("no Parquet footer at the end of the file (truncated or overwritten)")
        f.seek(size - 8 - n)
        return f.read(n + 8)


def footer_checksum(data_or_path: bytes | bytearray | str | Path) -> str:
    return f"crc32:{crc32(parquet_footer(data_or_path)):08x}"


__all__ = ["CHECKSUM_KEY", "RUN_ID_KEY", "ROWS_KEY", "PLACEHOLDER", "READ_ERRORS", "corrupt", "seal", "seal_holds",
           "without_seal", "sealed_parquet_bytes", "write_sealed_parquet", "read_sealed_parquet", "parquet_footer",
           "footer_checksum"]
