"""Distribution side files of a unit: ``gen/<run_id>/tensors/``.

A task with ``dist`` set (:class:`rescore.config.DistConfig`) stores, per selected scored position, the
next-token distribution: the whole log-softmax (``full``) or its K largest logprobs, their token ids and the
log of the mass left out (``topk``). While a unit is written, each batch of rows has its distributions in
``tensors/part-NNNNNN.safetensors``, written atomically *before* the rows are appended to ``rows.jsonl``, so
every stored row has its distributions on disk. When the unit completes, the parts are compacted into one
``tensors/dist.safetensors`` in sample-id order (the order of ``rows.parquet``); its bytes depend only on the
rows' values, so a resumed unit's file is byte-identical to an uninterrupted run's. The manifest records it
under ``dist`` (file, bytes, sha256, positions, vocabulary, format), and the file's own metadata names its unit
and the hash of its sample ids, so a file of another unit, a truncated or modified one is refused on read.

Tensors of ``dist.safetensors`` (N = stored positions, R = rows):

- ``offsets`` int64 [R+1]: row r's positions are ``offsets[r]:offsets[r+1]``;
- ``positions`` int32 [N]: the index of the position among the row's scored tokens (loglikelihood: the
  choices' continuation tokens one after the other);
- ``targets`` int32 [N]: the token scored there;
- ``full``: ``logprobs`` [N, V];
- ``topk``: ``topk_ids`` [N, K] (uint16 when the vocabulary fits, else int32), ``topk_logprobs`` [N, K]
  (descending) and ``tail_logmass`` float32 [N] (log of the probability outside the top K; -inf: none).

Logprobs are float16, or bfloat16 stored as their uint16 bit patterns (``dtype`` in the metadata); readers
get float32. Written with ``safetensors.numpy``; read by mapping each tensor at the offsets its header
gives (numpy only, after the file's sha256 is checked as a stream), so a large ``full`` file is never read into
memory whole. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rescore.artifacts.integrity import corrupt
from rescore.artifacts.io import FILE_MODE, atomic_write_bytes, fsync_dir, sha256_file
from rescore.errors import ConfigError, StoreError

TENSORS = "tensors"
DIST_FILE = "dist.safetensors"
_PART = re.compile(r"^part-(\d{6})\.safetensors$")
ROW_KEYS = ("positions", "targets", "logprobs", "topk_ids", "topk_logprobs", "tail_logmass")
_ST_DTYPES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32", np.dtype(np.int32): "I32",
              np.dtype(np.int64): "I64", np.dtype(np.uint16): "U16"}


def ids_hash(sample_ids: list[str]) -> str:
    return hashlib.sha256("\x1f".join(sample_ids).encode()).hexdigest()


class DistParts:
    """The side files of a unit being written (see the module docstring)."""

    def __init__(self, unit_dir: Path, run_id: str) -> None:
        self.dir = Path(unit_dir) / TENSORS
        self.run_id = run_id
        if self.dir.is_symlink():  # the unit's files are never written through a link
            from rescore.artifacts.io import symlink_error

            raise symlink_error(self.dir)
        self.dir.mkdir(exist_ok=True)
        nums = [int(m.group(1)) for p in self.dir.iterdir() if (m := _PART.match(p.name))]
        self._next = max(nums, default=0) + 1

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Take each row's ``_dist`` (popped: it is not a column) and write them as one part."""
        from safetensors.numpy import save

        dists = []
        for r in rows:
            d = r.pop("_dist", None)
            if d is None:
                raise ConfigError(f"the backend returned row {r['sample_id']!r} without its distributions",
                                  hint="storing distributions (a task's dist) needs the hf backend")
            dists.append(d)
        if not rows:
            return
        keys = [k for k in ROW_KEYS if k in dists[0]]
        tensors = {k: np.concatenate([d[k] for d in dists]) for k in keys}
        tensors["counts"] = np.array([len(d["positions"]) for d in dists], np.int64)
        meta = {"sample_ids": json.dumps([r["sample_id"] for r in rows]), "run_id": self.run_id,
                **{k: str(v) for k, v in dists[0].get("meta", {}).items()}}
        atomic_write_bytes(self.dir / f"part-{self._next:06d}.safetensors", save(tensors, metadata=meta))
        self._next += 1

    def _parts(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if _PART.match(p.name))

    def compact(self, sample_ids: list[str], cfg: Any) -> dict[str, Any]:
        """Write ``dist.safetensors`` for ``sample_ids`` (sorted) from the parts; what the manifest records."""
        from safetensors import safe_open

        where: dict[str, tuple[Any, int, int]] = {}
        handles, meta = [], {}
        for p in self._parts():  # a later part wins: a batch recomputed after a kill has the same values
            f = safe_open(str(p), framework="numpy")
            handles.append(f)
            m = f.metadata()
            meta = {k: v for k, v in m.items() if k not in ("sample_ids", "run_id")}
            counts = f.get_tensor("counts")
            starts = np.concatenate([[0], np.cumsum(counts)])
            for i, sid in enumerate(json.loads(m["sample_ids"])):
                where[sid] = (f, int(starts[i]), int(starts[i + 1]))
        missing = [s for s in sample_ids if s not in where]
        if missing:
            raise StoreError(f"unit {self.run_id}: no stored distributions for {len(missing)} row(s), e.g. "
                             f"{missing[0]!r}", hint=f"delete {self.dir.parent} and run `rescore gen` again")
        f0 = handles[0]
        names = [k for k in ROW_KEYS if k in f0.keys()]
        counts = np.array([where[s][2] - where[s][1] for s in sample_ids], np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        n = int(offsets[-1])
        if n == 0:
            raise ConfigError(f"unit {self.run_id}: the task's dist positions select no token",
                              hint="positions: answer selects loglikelihood continuations; use all or {every: N} "
                                   "for rolling tasks, or a smaller N")
        shapes: dict[str, tuple[str, list[int]]] = {"offsets": ("I64", [len(sample_ids) + 1])}
        for k in names:
            sl = f0.get_slice(k)
            shapes[k] = (sl.get_dtype(), [n, *sl.get_shape()[1:]])
        vocab = int(meta.get("vocab", 0))
        header_meta = {**meta, "run_id": self.run_id, "rows": str(len(sample_ids)), "positions": str(n),
                       "sample_ids_sha256": ids_hash(sample_ids)}
        header: dict[str, Any] = {"__metadata__": dict(sorted(header_meta.items()))}  # the same bytes every time
        off = 0
        for k, (dt, shape) in shapes.items():
            size = int(np.prod(shape)) * np.dtype(_np_dtype(dt)).itemsize
            header[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + size]}
            off += size
        hb = json.dumps(header, separators=(",", ":"), sort_keys=False).encode()
        hb += b" " * (-len(hb) % 8)
        h = hashlib.sha256()
        final = self.dir / DIST_FILE
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{DIST_FILE}.", suffix=".tmp")
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as out:
                def put(b: bytes) -> None:
                    out.write(b)
                    h.update(b)

                put(len(hb).to_bytes(8, "little"))
                put(hb)
                put(offsets.tobytes())
                for k in names:
                    for s in sample_ids:
                        f, a, b = where[s]
                        if b > a:
                            put(np.ascontiguousarray(f.get_slice(k)[a:b]).tobytes())
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(self.dir)
        return {"file": f"{TENSORS}/{DIST_FILE}", "bytes": final.stat().st_size, "sha256": h.hexdigest(),
                "positions": n, "rows": len(sample_ids), "vocab": vocab, "config": cfg.model_dump(mode="json")}

    def remove(self) -> None:
        """Drop the parts once the unit is complete (its manifest names dist.safetensors)."""
        for p in self._parts():
            p.unlink(missing_ok=True)


def _np_dtype(st: str) -> Any:
    return {v: k for k, v in _ST_DTYPES.items()}[st]


def to_f32(a: np.ndarray, dtype: str) -> np.ndarray:
    """Stored logprobs as float32 (bfloat16 are stored as their uint16 bit patterns)."""
    if dtype == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


@dataclass
class DistTensors:
    """A complete unit's distributions, checked (see :func:`read_dist`). ``full`` logprobs stay mapped from the
    file in their stored type (:meth:`full_chunks` converts a block of positions at a time); the other arrays
    are in memory, top-k logprobs as float32."""

    run_id: str
    sample_ids: list[str]
    offsets: np.ndarray
    positions: np.ndarray
    targets: np.ndarray
    vocab: int
    format: str  # full | topk
    stored_logprobs: np.ndarray | None = None  # [N, V], float16 or bfloat16 bits (``dtype``), mapped
    topk_ids: np.ndarray | None = None  # [N, K]
    topk_logprobs: np.ndarray | None = None  # [N, K], descending
    tail_logmass: np.ndarray | None = None  # [N]
    dtype: str = "float16"

    @property
    def row_index(self) -> np.ndarray:
        """The row (index into ``sample_ids``) of each position."""
        return np.repeat(np.arange(len(self.sample_ids)), np.diff(self.offsets))

    @property
    def logprobs(self) -> np.ndarray | None:
        """``full``: every position's logprobs as float32 (all in memory: metrics use :meth:`full_chunks`)."""
        return None if self.stored_logprobs is None else to_f32(np.asarray(self.stored_logprobs), self.dtype)

    def full_chunks(self, entries: int) -> Any:
        """``full``: (start, stop, float32 logprobs of positions start:stop) in order, blocks of about ``entries``
        logprobs (at least one position each)."""
        lp = self.stored_logprobs
        assert lp is not None
        step = max(1, entries // max(1, lp.shape[1]))
        for a in range(0, lp.shape[0], step):
            b = min(lp.shape[0], a + step)
            yield a, b, to_f32(np.asarray(lp[a:b]), self.dtype)


_NDIM = {"offsets": 1, "positions": 1, "targets": 1, "tail_logmass": 1, "logprobs": 2, "topk_ids": 2,
         "topk_logprobs": 2}


def _mapped(path: Path, size: int, hint: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors of a safetensors file, read-only views of one mapping of it (one open file, whatever the
    number of tensors), and its metadata; a header that does not describe the file is an error naming it."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= size - 8:
                raise ValueError(f"a header of {n} bytes")
            header = json.loads(f.read(n))
        meta = header.get("__metadata__") or {} if isinstance(header, dict) else None
        if not isinstance(meta, dict):
            raise ValueError("the header or its metadata is not an object")
        buf = np.memmap(path, dtype=np.uint8, mode="r")
        out: dict[str, np.ndarray] = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            dt = np.dtype(_np_dtype(spec["dtype"]))
            shape = tuple(int(x) for x in spec["shape"])
            a, b = (int(x) for x in spec["data_offsets"])
            if (min(shape, default=1) < 0 or b - a != int(np.prod(shape)) * dt.itemsize or a < 0 or 8 + n + b > size
                    or len(shape) != _NDIM.get(name, len(shape))):
                raise ValueError(f"tensor {name!r} does not fit the file")
            out[name] = buf[8 + n + a : 8 + n + b].view(dt).reshape(shape)
        return out, {str(k): str(v) for k, v in meta.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise corrupt(path, f"unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})", hint) from None


def read_dist(unit: Any) -> DistTensors:
    """The distributions of a complete unit (a :class:`rescore.artifacts.store.Unit`): the file the manifest
    names, with its size and sha256, bound to this unit and its rows; any damage is one error naming it. The file
    is hashed as a stream and then mapped, so a large ``full`` file is never held in memory whole."""
    m = unit.manifest
    info = m.get("dist")
    if not isinstance(info, dict):
        raise StoreError(f"unit {unit.run_id} ({unit.describe()}) has no stored distributions",
                         hint="set the task's dist (e.g. -O tasks.NAME.dist='{format: full}') and generate it")
    path = unit.path / str(info.get("file", f"{TENSORS}/{DIST_FILE}"))
    hint = f"delete {unit.path} and run `rescore gen` to regenerate the unit"
    try:
        size = path.stat().st_size
        digest = sha256_file(path, chunk=1 << 22) if size == info.get("bytes") else ""
    except FileNotFoundError:
        raise corrupt(path, "missing, but the unit's manifest records it", hint) from None
    except OSError as e:
        raise corrupt(path, f"unreadable ({e.strerror})", hint) from None
    if size != info.get("bytes"):
        raise corrupt(path, f"it has {size} bytes, its manifest says {info.get('bytes')} (truncated or replaced)", hint)
    if digest != info.get("sha256"):
        raise corrupt(path, "it does not match the sha256 in its manifest (modified or replaced)", hint)
    t, meta = _mapped(path, size, hint)
    if meta.get("run_id") != unit.run_id:
        raise corrupt(path, f"it holds the distributions of unit {meta.get('run_id')}, not of {unit.run_id}", hint)
    fmt = "full" if "logprobs" in t else "topk"
    want = ("offsets", "positions", "targets", *(("logprobs",) if fmt == "full" else
                                                ("topk_ids", "topk_logprobs", "tail_logmass")))
    if missing := [k for k in want if k not in t]:
        raise corrupt(path, f"it has no {missing[0]!r} tensor", hint)
    cols = ["sample_id", "dist_positions"] if "dist_positions" in unit.columns() else ["sample_id"]
    rows = unit.read_table(cols)
    order = sorted(range(rows.num_rows), key=rows.column("sample_id").to_pylist().__getitem__)
    rows = rows.take(order)
    ids = rows.column("sample_id").to_pylist()
    offsets = np.asarray(t["offsets"])
    if meta.get("sample_ids_sha256") != ids_hash(ids) or len(offsets) != len(ids) + 1:
        raise corrupt(path, "its rows are not the unit's rows", hint)
    n = len(t["positions"])
    if (offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) < 0) or len(t["targets"]) != n
            or any(len(t[k]) != n for k in want[3:])):
        raise corrupt(path, "its tensors do not agree on the number of positions", hint)
    vocab = int(meta.get("vocab", 0))
    if fmt == "full" and t["logprobs"].shape[1] != vocab:
        raise corrupt(path, f"its logprobs have {t['logprobs'].shape[1]} columns, its vocabulary is {vocab}", hint)
    if fmt == "topk" and t["topk_ids"].shape != t["topk_logprobs"].shape:
        raise corrupt(path, "its top-k ids and logprobs differ in shape", hint)
    if "dist_positions" in rows.column_names:  # the rows name the positions the file holds
        flat = rows.column("dist_positions").combine_chunks()
        counts = np.asarray(flat.value_lengths().fill_null(0), np.int64)
        if not np.array_equal(counts, np.diff(offsets)) or not np.array_equal(
                np.asarray(flat.flatten(), np.int32), t["positions"]):
            raise corrupt(path, "its positions are not the ones its unit's rows name", hint)
    dtype = meta.get("dtype", "float16")
    # everything but full logprobs is read into memory (a few hundred bytes per position): only a full unit
    # keeps its file mapped
    return DistTensors(
        run_id=unit.run_id, sample_ids=ids, offsets=np.array(offsets), positions=np.array(t["positions"]),
        targets=np.array(t["targets"]), vocab=vocab, format=fmt, dtype=dtype,
        stored_logprobs=t["logprobs"] if fmt == "full" else None,
        topk_ids=t["topk_ids"].astype(np.int64) if fmt == "topk" else None,
        topk_logprobs=to_f32(np.array(t["topk_logprobs"]), dtype) if fmt == "topk" else None,
        tail_logmass=np.array(t["tail_logmass"], np.float32) if fmt == "topk" else None,
    )


__all__ = ["DIST_FILE", "TENSORS", "DistParts", "DistTensors", "read_dist", "to_f32"]
