"""Reading raw rows from a task's source: local files (jsonl/json/csv/tsv/parquet/txt, the HellaSwag
text form) or Hugging Face ``datasets`` (imported only when a Hugging Face source is loaded).

Readers return plain records; the families' ``schema`` converters (``rescore.tasks.schemas``) turn
records of a converted copy into the Hugging Face schema that the prompt formats expect.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rescore.config import SourceConfig
from rescore.errors import ConfigError, MissingDataError
from rescore.install import install_root

SUFFIX_FORMAT = {
    ".jsonl": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".txt": "txt",
    ".raw": "txt",
    ".bz2": "bz2-hellaswag",
}


def project_root() -> Path:
    """The directory that holds the rescore package (the checkout, or site-packages for a wheel)."""
    return install_root()


def resolve_path(path: str, data_root: Path | None) -> Path:
    """A local source path: absolute as given, else relative to ``data_root`` (or the working directory)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    return (data_root / p) if data_root is not None else p


def require_exists(path: Path, what: str) -> Path:
    if not path.exists():
        raise MissingDataError(
            f"{what} not found: {path}",
            hint="check the path, or pass --data-root DIR (or set the suite's data_root) to the directory it is in",
        )
    return path


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    probe = path
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix in SUFFIX_FORMAT)
        if not files:
            raise ConfigError(f"no data files in directory {path}", hint=f"expected one of {sorted(SUFFIX_FORMAT)}")
        probe = files[0]
    try:
        return SUFFIX_FORMAT[probe.suffix]
    except KeyError:
        raise ConfigError(
            f"cannot tell the format of {probe}", hint="set source.format (jsonl, json, csv, tsv, parquet, txt, bz2-hellaswag)"
        ) from None


FORMAT_SUFFIXES = {
    "jsonl": (".jsonl",),
    "json": (".json",),
    "csv": (".csv",),
    "tsv": (".tsv",),
    "parquet": (".parquet",),
    "txt": (".txt", ".raw"),
    "bz2-hellaswag": (".bz2",),
}


def read_local(path: Path, fmt: str = "auto") -> list[Any]:
    """All records of a local file, or of every file of that format in a directory (sorted by name).

    jsonl/json/parquet give dicts; txt gives one record ``{"text": whole file}``; csv/tsv records (the
    header, if any, too) and bz2-hellaswag items (six lines) give ``{"_file": file stem, "fields": [...]}``.
    Dict records read from a directory carry the file's stem under ``"_file"``.
    """
    fmt = detect_format(path, fmt)
    files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix in FORMAT_SUFFIXES[fmt]) if path.is_dir() else [path]
    for f in files:  # a file's name is recorded with its rows (JSON, UTF-8 text only)
        try:
            f.stem.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{str(f)!r}: the file name is not UTF-8 text", hint="rename the file") from None
    out: list[Any] = []
    for f in files:
        for rec in _read_file(f, fmt):
            if isinstance(rec, list):
                out.append({"_file": f.stem, "fields": rec})
            else:
                out.append({**rec, "_file": f.stem} if path.is_dir() else rec)
    return out


def _json(text: str, where: str) -> Any:
    """One JSON document; bad syntax or nesting too deep to read is a ConfigError naming ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON ({e.msg} at column {e.colno})",
                          hint="fix or remove the line; the file holds one JSON object per line") from None
    except RecursionError:
        raise ConfigError(f"{where}: JSON nested too deeply to read", hint="fix or remove the line") from None


def _newlines(text: str) -> str:
    """Universal newlines, as text mode reads them (\\r\\n and \\r become \\n)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_file(path: Path, fmt: str) -> list[Any]:
    from rescore.config import decode_utf8

    if fmt == "jsonl":
        text = _newlines(decode_utf8(path.read_bytes(), path))
        out = []
        for i, line in enumerate(text.split("\n"), 1):  # i: the line number an editor shows
            if line.strip():
                rec = _json(line, f"{path}:{i}")
                if not isinstance(rec, dict):
                    raise ConfigError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}",
                                      hint="the file holds one JSON object per line")
                out.append(rec)
        return out
    if fmt == "json":
        try:
            data = json.loads(decode_utf8(path.read_bytes(), path))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})",
                              hint="fix the file") from None
        except RecursionError:
            raise ConfigError(f"{path}: JSON nested too deeply to read", hint="fix the file") from None
        if isinstance(data, dict) and "data" in data:
            data = data["data"]
        if not isinstance(data, list):
            raise ConfigError(f"{path}: expected a JSON list of records", hint="or use jsonl")
        return data
    if fmt in ("csv", "tsv"):
        text = decode_utf8(path.read_bytes(), path)
        reader = csv.reader(io.StringIO(text), delimiter="," if fmt == "csv" else "\t")
        try:
            return list(reader)
        except csv.Error as e:
            raise ConfigError(f"{path}:{reader.line_num}: not readable as {fmt} ({e})",
                              hint="fix the line, or convert the file to jsonl") from None
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError, ValueError) as e:
            raise ConfigError(f"{path}: not a readable Parquet file ({e})", hint="check the file") from None
    if fmt == "txt":
        text = decode_utf8(path.read_bytes(), path)
        return [{"text": text}] if text.strip() else []
    if fmt == "bz2-hellaswag":
        try:
            lines = _newlines(decode_utf8(bz2.open(path, "rb").read(), path)).split("\n")
        except (OSError, EOFError) as e:
            raise ConfigError(f"{path}: not a readable bz2 file ({e})", hint="check the file") from None
        if lines and lines[-1] == "":
            lines.pop()
        if len(lines) % 6:
            raise MissingDataError(f"{path}: {len(lines)} lines is not a multiple of 6", hint="the file is truncated")
        return [lines[i : i + 6] for i in range(0, len(lines), 6)]
    raise ConfigError(f"unknown source format {fmt!r}")


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_hub_probe: dict[str, str | None] = {}


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached from here (None: it can, or a proxy decides). Probed
    once per process with a plain TCP connection, so an offline compute node learns it in at most
    ``timeout`` seconds instead of through the Hub client's retries (about half a minute per dataset)."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    key = f"{host}:{port}"
    if key not in _hub_probe:
        reason = None
        if not any(os.environ.get(k) for k in _PROXY_VARS):
            try:
                socket.create_connection((host, port), timeout=timeout).close()
            except OSError as e:
                reason = f"{key}: {e.strerror or e}"
        _hub_probe[key] = reason
    return _hub_probe[key]


def _env_offline() -> bool:
    return any(os.environ.get(k, "").upper() in ("1", "TRUE", "YES", "ON") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


_offline_lock = threading.Lock()
_offline_state: dict[str, Any] = {"depth": 0, "saved": None}


@contextmanager
def _offline_hub() -> Iterator[None]:
    """The Hugging Face libraries in offline mode (local cache only) for the duration. Nested or
    overlapping uses share one switch: the first turns it on, the last restores what was there."""
    import datasets.config as dcfg
    import huggingface_hub.constants as hcfg

    with _offline_lock:
        if _offline_state["depth"] == 0:
            _offline_state["saved"] = (hcfg.HF_HUB_OFFLINE, dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE)
            hcfg.HF_HUB_OFFLINE = dcfg.HF_HUB_OFFLINE = dcfg.HF_DATASETS_OFFLINE = True
        _offline_state["depth"] += 1
    try:
        yield
    finally:
        with _offline_lock:
            _offline_state["depth"] -= 1
            if _offline_state["depth"] == 0:
                hcfg.HF_HUB_OFFLINE, dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE = _offline_state["saved"]


def iter_hf(source: SourceConfig, split: str, *, streaming: bool = False) -> Iterator[dict[str, Any]]:
    """Rows of a Hugging Face dataset split (needs ``datasets`` and, unless cached, the network). When
    the Hub cannot be reached, only the local Hugging Face cache is tried."""
    try:
        import datasets
    except ImportError:
        raise MissingDataError(
            f"loading {source.hf!r} needs the 'datasets' package", hint="pip install 'rescore[data]'"
        ) from None
    unreachable = None if _env_offline() else hub_unreachable()
    try:
        with _offline_hub() if unreachable else nullcontext():
            extra = {"data_dir": source.data_dir} if source.data_dir else {}
            ds = datasets.load_dataset(
                source.hf, source.config_name, split=split, revision=source.revision, streaming=streaming, **extra
            )
            yield from ds  # a streamed dataset reads while it is iterated: same mode, same errors
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds (offline, missing config, auth)
        if unreachable:
            hint = (f"the Hugging Face Hub is unreachable from this machine ({unreachable}) and the dataset is not in "
                    "its local cache: run `rescore prepare` where the network is available (the store keeps the "
                    "rows), or point the task's source.path at a local copy")
        elif _env_offline():
            hint = ("the Hugging Face libraries are set offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): unset them on a "
                    "machine with network access, or point the task's source.path at a local copy")
        else:
            hint = ("check the dataset id, config and split, and the network; or point the task's source.path at "
                    "a local copy (relative paths resolve against --data-root)")
        raise MissingDataError(
            f"could not load Hugging Face dataset {source.hf!r} (config {source.config_name!r}, split {split!r}"
            f"{f', data_dir {source.data_dir!r}' if source.data_dir else ''}): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", hint=hint) from None


def hf_revision(source: SourceConfig) -> str | None:
    """The revision recorded in meta.json: the configured one, else the resolved commit when known."""
    if source.revision:
        return source.revision
    if _env_offline() or hub_unreachable():
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(source.hf).sha  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - best effort, only for the record
        return None
