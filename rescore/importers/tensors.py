"""Import generated token ids saved as tensors (``.pt`` or ``.safetensors``), one unit per method.

A file holds, per decoding method, the generated token ids (``[N, T]``: one candidate per sample, or
``[N, n, T]``: n candidates) and a mask of the same shape, optionally per-token logprobs. Nested dicts in a
``.pt`` file are addressed with dotted keys (``greedy.ids``). The ids are decoded with the given tokenizer (a
local tokenizer directory through transformers' AutoTokenizer, or a ``tokenizer.json`` through
``tokenizers``). The mapping YAML (:class:`TensorsMapping`, ``extra="forbid"``)::

    task: gsm8k                     # each method becomes task "<task>.<method>"
    model: {name: sft-7b, path: /ckpt/sft-7b, step: 2000}
    tokenizer: /ckpt/sft-7b         # directory or tokenizer.json (relative paths: to the mapping file)
    mask: keep                      # keep: 1 marks a real token (attention mask); pad: 1 marks padding
    sample_ids: problem_ids         # 1-D tensor (or list in a .pt) of ids; default: the row index
    sample_id_format: "{:08d}"
    references:                     # where the reference answers come from (matched by sample id)
      file: gsm8k_test.jsonl        # JSONL; or `target_ids`/`target_mask` tensors decoded like the outputs
      sample_id: idx
      target: answer
    methods:
      greedy: {token_ids: greedy.ids, mask: greedy.mask}
      t0.8: {token_ids: sampled.ids, mask: sampled.mask, logprobs: sampled.lps, gen: {temperature: 0.8, n: 8}}

``.pt`` files are loaded only with ``torch.load(weights_only=True)``: a pickle that needs arbitrary code is
refused. torch is imported only for ``.pt`` files (``.safetensors`` are read with numpy alone).
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from rescore.artifacts.store import Store
from rescore.config import GenConfig, Tier
from rescore.core import canonical_json
from rescore.importers.common import (
    ImportFormatError,
    ImportResult,
    ImportUnit,
    data_fingerprint,
    fail,
    get_path,
    gsm8k_answer,
    meta_json,
    outputs_fingerprint,
    read_jsonl,
    safe_name,
    source_file,
    write_unit,
)
from rescore.importers.jsonl import ModelSpec, Strict, _load, _name, sample_id_format_check


def _resolve(v: str | None, info: ValidationInfo) -> str | None:
    if v is None:
        return None
    p = Path(v).expanduser()
    base = (info.context or {}).get("base")
    return str(p if p.is_absolute() or base is None else (Path(base) / p).resolve())


class References(Strict):
    """Reference answers: a JSONL file matched by sample id, or target token tensors in the same file."""

    file: str | None = None
    sample_id: str = "sample_id"
    target: str | None = None
    answer: str | None = None
    prompt: str | None = None
    target_ids: str | None = None
    target_mask: str | None = None

    @field_validator("file")
    @classmethod
    def _path(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _resolve(v, info)

    @model_validator(mode="after")
    def _one_source(self) -> References:
        if (self.file is None) == (self.target_ids is None):
            raise ValueError("references need exactly one of 'file' (JSONL) or 'target_ids' (a tensor key)")
        if self.file is not None and self.target is None and self.answer is None:
            raise ValueError("references.file needs 'target' or 'answer' (the field holding the reference)")
        return self


class Method(Strict):
    token_ids: str
    mask: str | None = Field(None, description="tensor key of the mask; none: every position is a token")
    logprobs: str | None = None
    task: str | None = Field(None, description="task name of this method's unit (default <task>.<method>)")
    gen: GenConfig | None = None

    @field_validator("task")
    @classmethod
    def _valid(cls, v: str | None) -> str | None:
        return _name(v) if v is not None else None


class TensorsMapping(Strict):
    task: str
    model: ModelSpec
    tokenizer: str
    methods: dict[str, Method]
    references: References
    mask: str = Field("keep", pattern="^(keep|pad)$")
    skip_special_tokens: bool = True
    sample_ids: str | None = None
    sample_id_format: str = "{:08d}"
    _id_format = field_validator("sample_id_format")(classmethod(lambda cls, v: sample_id_format_check(v)))
    prompt_ids: str | None = None
    prompt_mask: str | None = None
    suite: str = "import"
    seed: int = 0
    tier: Tier = "tier3"
    family: str = "generate"

    @field_validator("task", "suite")
    @classmethod
    def _names(cls, v: str) -> str:
        return _name(v)

    @field_validator("tokenizer")
    @classmethod
    def _tok(cls, v: str, info: ValidationInfo) -> str:
        return _resolve(v, info) or v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: dict[str, Method]) -> dict[str, Method]:
        if not v:
            raise ValueError("name at least one method")
        return v


def load_mapping(path: Path) -> TensorsMapping:
    return _load(path, TensorsMapping)


# -- loading tensors ----------------------------------------------------------------------------------
def load_tensors(path: Path) -> dict[str, Any]:
    """Flat ``{dotted key: numpy array or list}`` of a ``.pt`` (weights-only) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise ImportFormatError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors(path)
    if suffix in (".pt", ".pth", ".bin"):
        return _flatten(_torch_load(path))
    raise ImportFormatError(f"{path}: unknown tensor file type {suffix!r}", hint="use .pt/.pth or .safetensors")


_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
              "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?", "BF16": "<u2"}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file with numpy alone (bfloat16 widened to float32): an 8-byte header length,
    a JSON header ``{name: {dtype, shape, data_offsets}}``, then the raw little-endian data."""
    data = Path(path).read_bytes()
    bad = f"{path}: not a readable safetensors file"
    if len(data) < 8:
        raise ImportFormatError(f"{bad} (shorter than its header)")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ImportFormatError(f"{bad} (header of {n} bytes, file of {len(data)}: truncated)")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImportFormatError(f"{bad} (header is not JSON: {e})") from None
    except RecursionError:
        raise ImportFormatError(f"{bad} (header nested too deeply to read)") from None
    if not isinstance(header, dict):
        raise ImportFormatError(f"{bad} (header is not a JSON object)")
    body = memoryview(data)[8 + n :]
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dt = np.dtype(_ST_DTYPES[info["dtype"]])
            shape = [int(x) for x in info["shape"]]
            a, b = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ImportFormatError(f"{bad} (tensor {name!r}: unsupported dtype or bad header entry {info!r})") from None
        count = int(np.prod(shape)) if shape else 1
        if not 0 <= a <= b <= len(body) or b - a != count * dt.itemsize:
            raise ImportFormatError(f"{bad} (tensor {name!r}: data outside the file or of the wrong size: truncated)")
        arr = np.frombuffer(body[a:b], dtype=dt).reshape(shape)
        if info["dtype"] == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr
    return out


def _torch_load(path: Path) -> Any:
    try:
        import torch
    except ImportError:
        raise ImportFormatError("reading .pt files needs torch", hint="pip install 'rescore[hf]', or save as .safetensors") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f"it references {m.group(1)}" if m else "it needs more than tensors, lists and dicts"
        raise ImportFormatError(
            f"{path}: refused: not a weights-only file ({what}; loading it fully could run arbitrary code)",
            hint="save plain tensors, lists and dicts (torch.save({...})) or use .safetensors") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImportFormatError(f"{path}: not a readable torch file ({msg[:200]})") from None


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    key = prefix[:-1]
    if hasattr(obj, "detach"):  # a torch tensor
        import torch

        t = obj.detach().cpu()
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.float()  # numpy has no bfloat16
        out[key] = t.numpy()
    elif isinstance(obj, list | tuple) and obj and all(hasattr(x, "detach") for x in obj):
        for i, x in enumerate(obj):
            out.update(_flatten(x, f"{prefix}{i}."))
    else:
        out[key] = obj
    return out


def _get(path: Path, tensors: dict[str, Any], key: str) -> Any:
    if key in tensors:
        return tensors[key]
    avail = ", ".join(sorted(tensors)[:20])
    raise ImportFormatError(f"{path}: no tensor {key!r}", hint=f"the file holds: {avail}")


def _array(path: Path, key: str, v: Any) -> np.ndarray:
    try:
        return np.asarray(v)
    except (TypeError, ValueError):
        raise fail(path, None, key, "is not an array") from None


# -- decoding -----------------------------------------------------------------------------------------
def load_decoder(spec: str, skip_special: bool) -> Callable[[list[list[int]]], list[str]]:
    raw = _load_decoder(spec, skip_special)

    def decode(batch: list[list[int]]) -> list[str]:
        try:
            return list(raw(batch))
        except (OverflowError, IndexError, TypeError, ValueError) as e:
            raise ImportFormatError(f"tokenizer {spec} cannot decode the token ids ({type(e).__name__}: {e})",
                                    hint="is it the tokenizer the ids were generated with?") from None
        except Exception as e:  # tokenizers raises plain Exceptions for ids outside its vocabulary
            raise ImportFormatError(f"tokenizer {spec} cannot decode the token ids ({e})",
                                    hint="is it the tokenizer the ids were generated with?") from None

    return decode


def _load_decoder(spec: str, skip_special: bool) -> Callable[[list[list[int]]], list[str]]:
    p = Path(spec)
    if p.is_file():
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportFormatError("decoding with tokenizer.json needs the tokenizers package",
                                    hint="pip install 'rescore[hf]'") from None
        try:
            tok = Tokenizer.from_file(str(p))
        except Exception as e:  # tokenizers raises a bare Exception for a malformed file
            raise ImportFormatError(f"{p}: not a tokenizers JSON file ({e})") from None
        return lambda batch: tok.decode_batch(batch, skip_special_tokens=skip_special)
    if p.is_dir():
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ImportFormatError("decoding with a tokenizer directory needs transformers",
                                    hint="pip install 'rescore[hf]'") from None
        try:
            hf = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ImportFormatError(f"{p}: cannot load a tokenizer ({str(e).splitlines()[0][:200]})") from None
        return lambda batch: hf.batch_decode(batch, skip_special_tokens=skip_special)
    raise ImportFormatError(f"tokenizer {spec}: no such file or directory",
                            hint="give a local tokenizer directory or a tokenizer.json file")


def _sequences(path: Path, key: str, ids: np.ndarray, mask: np.ndarray | None, keep: bool) -> list[list[list[int]]]:
    """Per sample, per candidate: the token ids the mask marks as real."""
    if ids.ndim == 2:
        ids = ids[:, None, :]
        mask = mask[:, None, :] if mask is not None else None
    if ids.ndim != 3 or not np.issubdtype(ids.dtype, np.integer):
        raise fail(path, None, key, f"must be an integer tensor [N, T] or [N, n, T], got {ids.dtype} {list(ids.shape)}")
    valid = np.ones(ids.shape, dtype=bool) if mask is None else (mask.astype(bool) if keep else ~mask.astype(bool))
    return [[ids[i, j][valid[i, j]].tolist() for j in range(ids.shape[1])] for i in range(ids.shape[0])]


def _masked_floats(path: Path, key: str, lps: np.ndarray, ids: np.ndarray, mask: np.ndarray | None,
                   keep: bool) -> list[list[list[float]]]:
    if lps.shape != ids.shape:
        raise fail(path, None, key, f"shape {list(lps.shape)} differs from the token ids' {list(ids.shape)}")
    if lps.ndim == 2:
        lps = lps[:, None, :]
        ids = ids[:, None, :]
        mask = mask[:, None, :] if mask is not None else None
    valid = np.ones(ids.shape, dtype=bool) if mask is None else (mask.astype(bool) if keep else ~mask.astype(bool))
    return [[lps[i, j][valid[i, j]].astype(np.float32).tolist() for j in range(ids.shape[1])] for i in range(ids.shape[0])]


# -- the import ---------------------------------------------------------------------------------------
def _sample_ids(path: Path, tensors: dict[str, Any], m: TensorsMapping, n: int) -> list[str]:
    if m.sample_ids is None:
        raw: list[Any] = list(range(n))
    else:
        v = _get(path, tensors, m.sample_ids)
        raw = v.tolist() if isinstance(v, np.ndarray) else list(v) if isinstance(v, list | tuple) else []
        if len(raw) != n:
            raise fail(path, None, m.sample_ids, f"must hold {n} ids (one per row), got {len(raw)}")
    try:
        ids = [m.sample_id_format.format(x) for x in raw]
    except (ValueError, IndexError, TypeError) as e:
        raise fail(path, None, m.sample_ids, f"ids do not fit sample_id_format {m.sample_id_format!r} ({e})") from None
    if len(set(ids)) != len(ids):
        raise fail(path, None, m.sample_ids, "holds duplicate ids")
    return ids


def _references(path: Path, tensors: dict[str, Any], m: TensorsMapping, ids: list[str],
                decode: Callable[[list[list[int]]], list[str]]) -> list[dict[str, Any]]:
    r = m.references
    if r.target_ids is not None:
        t = _array(path, r.target_ids, _get(path, tensors, r.target_ids))
        mask = _array(path, r.target_mask, _get(path, tensors, r.target_mask)) if r.target_mask else None
        seqs = _sequences(path, r.target_ids, t, mask, m.mask == "keep")
        if len(seqs) != len(ids):
            raise fail(path, None, r.target_ids, f"must have {len(ids)} rows, got {len(seqs)}")
        texts = decode([s[0] for s in seqs])
        return [{"target": x, "answer": gsm8k_answer(x), "prompt": None} for x in texts]
    ref_path = Path(r.file or "")
    by_id: dict[str, dict[str, Any]] = {}
    for line, obj in read_jsonl(ref_path):
        try:
            raw = get_path(obj, r.sample_id)
        except KeyError:
            raise fail(ref_path, line, r.sample_id, "is missing") from None
        try:
            sid = m.sample_id_format.format(raw)
        except (ValueError, IndexError, TypeError) as e:
            raise fail(ref_path, line, r.sample_id, f"does not fit sample_id_format {m.sample_id_format!r} ({e})") from None
        vals: dict[str, Any] = {}
        for name in ("target", "answer", "prompt"):
            key = getattr(r, name)
            if key is None:
                vals[name] = None
                continue
            try:
                v = get_path(obj, key)
            except KeyError:
                raise fail(ref_path, line, key, "is missing") from None
            if not isinstance(v, str | int | float) or isinstance(v, bool):
                raise fail(ref_path, line, key, f"must be a string or a number, got {type(v).__name__}")
            vals[name] = str(v)
        ans = vals["answer"].replace(",", "").strip() if vals["answer"] is not None else gsm8k_answer(vals["target"])
        by_id[sid] = {"target": vals["target"], "answer": ans, "prompt": vals["prompt"]}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise fail(ref_path, None, r.sample_id, f"has no reference for sample id(s) {missing[:5]}",
                   hint="ids are matched after sample_id_format; check sample_ids and sample_id_format")
    return [by_id[i] for i in ids]


def import_tensors(store: Store, path: Path, m: TensorsMapping, command: str | None = None,
                   ) -> tuple[list[ImportResult], list[str]]:
    path = Path(path)
    src = source_file(path)
    tensors = load_tensors(path)
    decode = load_decoder(m.tokenizer, m.skip_special_tokens)
    keep = m.mask == "keep"
    # check every method's tensors before writing anything
    methods = []
    n_rows = None
    for name, meth in m.methods.items():
        ids = _array(path, meth.token_ids, _get(path, tensors, meth.token_ids))
        mask = _array(path, meth.mask, _get(path, tensors, meth.mask)) if meth.mask else None
        if mask is not None and mask.shape != ids.shape:
            raise fail(path, None, meth.mask, f"shape {list(mask.shape)} differs from {meth.token_ids}'s {list(ids.shape)}")
        seqs = _sequences(path, meth.token_ids, ids, mask, keep)
        lps = None
        if meth.logprobs:
            lps = _masked_floats(path, meth.logprobs, _array(path, meth.logprobs, _get(path, tensors, meth.logprobs)),
                                 ids, mask, keep)
        if n_rows is not None and len(seqs) != n_rows:
            raise fail(path, None, meth.token_ids, f"has {len(seqs)} rows, other methods {n_rows}")
        n_rows = len(seqs)
        methods.append((name, meth, seqs, lps))
    assert n_rows is not None
    ids_ = _sample_ids(path, tensors, m, n_rows)
    refs = _references(path, tensors, m, ids_, decode)
    prompts: list[str | None] = [r["prompt"] for r in refs]
    if m.prompt_ids:
        p = _array(path, m.prompt_ids, _get(path, tensors, m.prompt_ids))
        pm = _array(path, m.prompt_mask, _get(path, tensors, m.prompt_mask)) if m.prompt_mask else None
        pseq = _sequences(path, m.prompt_ids, p, pm, keep)
        if len(pseq) != n_rows:
            raise fail(path, None, m.prompt_ids, f"must have {n_rows} rows, got {len(pseq)}")
        prompts = list(decode([s[0] for s in pseq]))
    units: list[ImportUnit] = []
    for name, meth, seqs, lps in methods:
        task = meth.task or f"{m.task}.{safe_name(name, 'method name')}"
        flat = [c for s in seqs for c in s]
        texts = decode(flat)
        rows, k = [], 0
        gen = meth.gen.to_params().to_dict() if meth.gen else None
        for i, sid in enumerate(ids_):
            n = len(seqs[i])
            meta: dict[str, Any] = {"method": name}
            if refs[i]["answer"] is not None:
                meta["answer"] = refs[i]["answer"]
            rows.append({
                "sample_id": sid, "task": task, "request_type": "generate", "target": refs[i]["target"],
                "gold": None, "category": None, "meta": meta_json(meta), "prompt": prompts[i],
                "prompt_token_ids": None, "chat": False, "messages": None, "seed": m.seed,
                "sampling": canonical_json(gen) if gen else None, "candidates": texts[k : k + n],
                "cand_token_ids": seqs[i], "cand_logprobs": lps[i] if lps is not None else None,
            })
            k += n
        inputs = [(r["sample_id"], r["prompt"], r["target"]) for r in rows]
        unit = ImportUnit(
            kind="tensors", request_type="generate",
            model={"name": m.model.name, "path": m.model.path, "backend": "import:tensors",
                   "precision": m.model.precision, "step": m.model.step, "stage": m.model.stage},
            task={"name": task, "family": m.family, "tier": m.tier,
                  "config": {"method": name, "mapping": m.model_dump(mode="json", exclude={"model", "suite", "seed"})}},
            suite=m.suite, data_fp=data_fingerprint(inputs), seed=m.seed, gen=gen, rows=rows,
            outputs_fp=outputs_fingerprint(rows), sources=[src],
            info={"method": name, "tokenizer": m.tokenizer},
        )
        units.append(unit)
    return [write_unit(store, u, command) for u in units], []


__all__ = ["TensorsMapping", "Method", "References", "load_mapping", "load_tensors", "import_tensors"]
