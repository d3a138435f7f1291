"""What every importer shares: strict readers that name the file, line and field that failed, names,
manifests, and :func:`write_unit`, which writes one imported unit through the store's ``UnitWriter``.

Identity of an imported unit. ``resolved`` describes what was evaluated (importer, model, task, data
fingerprint of the inputs, seed, generation parameters), like a generated unit's resolved config; the run id
is the content hash of ``resolved`` *plus* a fingerprint of the outputs (responses, loglikelihoods). So:

- importing the same files again finds the same run id and does nothing ("already imported");
- changed outputs (a re-run, an edited file) give a new unit instead of silently replacing the old one;
- units that differ only in their seed still share ``resolved`` minus the seed, so ``rescore score``
  aggregates them over seeds like generated units.

Source files are only ever opened for reading.
"""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from rescore.artifacts.ids import run_id as make_run_id
from rescore.artifacts.io import sha256_file
from rescore.artifacts.manifest import Manifest, checked_manifest
from rescore.artifacts.store import MANIFEST, Store, UnitWriter, environment_versions
from rescore.core import canonical_json, content_hash
from rescore.errors import ConfigError, CorruptArtifactError, StoreError, UserError
from rescore.install import git_revision
from rescore.registry import NAME_RE

IMPORTER_VERSION = 1  # bump when the rows an importer writes for the same input change


class ImportFormatError(UserError):
    """A source file cannot be parsed as the importer expects (the message names file, line and field)."""


def where(path: Path | str, line: int | None = None, fld: str | None = None) -> str:
    """``path:line: field 'x'`` prefix of an error message."""
    out = str(path) + (f":{line}" if line is not None else "")
    return out + (f": field {fld!r}" if fld else "")


def fail(path: Path | str, line: int | None, fld: str | None, what: str, hint: str | None = None) -> ImportFormatError:
    return ImportFormatError(f"{where(path, line, fld)} {what}", hint=hint)


# -- reading ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceFile:
    path: str
    sha256: str
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}


def source_file(path: Path) -> SourceFile:
    p = Path(path)
    if p.is_dir():
        raise ImportFormatError(f"{p} is a directory", hint="give the file to import")
    if not p.is_file():
        raise ImportFormatError(f"{p}: no such file")
    resolved = str(p.resolve())
    try:
        resolved.encode("utf-8")
    except UnicodeEncodeError:  # the manifest records the path, and JSON holds UTF-8 text only
        raise ImportFormatError(f"{resolved!r}: the path is not UTF-8 text", hint="rename the file or directory") from None
    return SourceFile(resolved, sha256_file(p), p.stat().st_size)


def read_json(path: Path) -> Any:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImportFormatError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ImportFormatError(f"{path}: not valid JSON ({e})",
                                hint="the file is damaged or truncated; use the tool's original output") from None


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line. A line that is not a JSON object is an error naming
    it; a last line without its newline that does not parse is reported as truncated."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImportFormatError(f"{path}: cannot read ({e.strerror})") from None
    lines = data.split(b"\n")
    torn = not data.endswith(b"\n")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            if torn and i == len(lines):
                raise ImportFormatError(
                    f"{path}:{i}: the last line is truncated ({len(line)} bytes, no newline, not valid JSON)",
                    hint="the writer was interrupted or is still running; import a finished file") from None
            raise ImportFormatError(f"{path}:{i}: not valid JSON ({e})", hint="fix or remove the line") from None
        if not isinstance(obj, dict):
            raise ImportFormatError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        yield i, obj


def get_path(obj: Any, dotted: str) -> Any:
    """``obj["a"]["b"]`` for ``"a.b"``; a list index may appear as a number (``"a.0"``). KeyError if absent."""
    cur = obj
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.lstrip("-").isdigit() and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise KeyError(dotted)
    return cur


# -- names --------------------------------------------------------------------------------------------
_BAD = re.compile(r"[^a-z0-9_.-]+")


def safe_name(raw: str, kind: str = "name") -> str:
    """A name usable on disk (``[a-z0-9_.-]``): lowercased, other characters replaced by ``_``."""
    s = _BAD.sub("_", str(raw).strip().lower()).strip("_.-")
    s = re.sub(r"\.{2,}", ".", s)
    if not s or not NAME_RE.match(s):
        raise ConfigError(f"cannot make a valid {kind} from {raw!r}", hint=f"pass the {kind} explicitly")
    return s


def checked_name(name: str, kind: str) -> str:
    if not NAME_RE.match(name) or ".." in name:
        raise ConfigError(f"invalid {kind} {name!r}",
                          hint="use lowercase letters, digits, '_', '.', '-' and start with a letter or digit")
    return name


PRECISION_OF_DTYPE = {
    "float32": "fp32", "fp32": "fp32", "torch.float32": "fp32", "float": "fp32",
    "bfloat16": "bf16", "bf16": "bf16", "torch.bfloat16": "bf16",
    "float16": "fp16", "fp16": "fp16", "half": "fp16", "torch.float16": "fp16",
}


def precision_of(dtype: Any, *, load_in_8bit: Any = False, load_in_4bit: Any = False) -> str | None:
    """rescore's precision name for a dtype string as tools write it (None when unknown, e.g. ``auto``)."""
    if str(load_in_4bit).lower() == "true":
        return "int4"
    if str(load_in_8bit).lower() == "true":
        return "int8"
    return PRECISION_OF_DTYPE.get(str(dtype).strip().lower()) if dtype is not None else None


def gsm8k_answer(target: str | None) -> str | None:
    """The normalised final answer of a GSM8K-style reference (text after ``####``, commas removed)."""
    if not target or "####" not in target:
        return None
    return target.split("####")[-1].strip().replace(",", "")


def meta_json(meta: dict[str, Any]) -> str | None:
    return canonical_json(meta) if meta else None


# -- units --------------------------------------------------------------------------------------------
@dataclass
class ImportUnit:
    """One unit to write: ``resolved`` (identity without outputs), ``outputs_fp`` and the rows."""

    kind: str  # lm-eval | jsonl | tensors
    request_type: str
    model: dict[str, Any]
    task: dict[str, Any]
    suite: str
    data_fp: str
    seed: int
    gen: dict[str, Any] | None
    rows: list[dict[str, Any]]
    outputs_fp: str
    sources: list[SourceFile]
    info: dict[str, Any] = field(default_factory=dict)  # extra manifest["import"] fields (checks, tool versions)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def resolved(self) -> dict[str, Any]:
        ident = {k: self.model.get(k) for k in ("name", "path", "backend", "precision", "step", "stage")}
        ident["args"] = self.model.get("args")
        return {"import": self.kind, "importer_version": IMPORTER_VERSION, "model": ident,
                "task": {"name": self.task["name"], "config": self.task.get("config")},
                "data_fp": self.data_fp, "seed": self.seed, "gen": self.gen}

    @property
    def run_id(self) -> str:
        return make_run_id({**self.resolved, "outputs_fp": self.outputs_fp})


@dataclass(frozen=True)
class ImportResult:
    run_id: str
    model: str
    task: str
    request_type: str
    rows: int
    action: str  # imported | already imported | resumed
    notes: tuple[str, ...] = ()


def data_fingerprint(items: Sequence[Any]) -> str:
    """Fingerprint of a unit's inputs (sample ids and what was asked), independent of the outputs."""
    return content_hash(list(items), 16)


def outputs_fingerprint(rows: Sequence[dict[str, Any]]) -> str:
    return content_hash([canonical_json(r) for r in rows], 20)


def build_manifest(u: ImportUnit, command: str | None) -> Manifest:
    return Manifest.build({
        "request_type": u.request_type,
        "model": dict(u.model),
        "suite": u.suite,
        "task": dict(u.task),
        "data_fp": u.data_fp,
        "data_meta": None,
        "seed": u.seed,
        "gen": u.gen,
        "resolved": u.resolved,
        "import": {"kind": u.kind, "importer_version": IMPORTER_VERSION, "outputs_fp": u.outputs_fp,
                   "sources": [s.as_dict() for s in u.sources], **u.info},
        "versions": environment_versions() | u.versions,
        "git_rev": git_revision(),
        "host": socket.gethostname(),
        "command": command or " ".join(sys.argv),
        "rows_total": len(u.rows),
    })


def write_unit(store: Store, u: ImportUnit, command: str | None = None) -> ImportResult:
    """Write ``u`` as a complete unit (or find it already there). Resumes an import that was interrupted."""
    ids = [r["sample_id"] for r in u.rows]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ImportFormatError(f"task {u.task['name']}: duplicate sample ids {dup}",
                                hint="every sample needs its own id; check the sample_id field of the mapping")
    rid = u.run_id
    name, task = str(u.model.get("name")), str(u.task["name"])
    done = store.gen_dir / rid / MANIFEST
    if done.is_file():
        try:
            previous = orjson.loads(done.read_bytes())
            if not isinstance(previous, dict):
                raise orjson.JSONDecodeError("not a JSON object", "", 0)
        except orjson.JSONDecodeError as e:  # the unit this import would write is damaged: never write over it
            raise CorruptArtifactError(f"{done} is not a valid manifest ({e}): the unit of this import is damaged",
                                       hint=f"remove {done.parent} and run the same import again") from None
        if previous.get("status") == "complete":
            return ImportResult(rid, name, task, u.request_type, len(ids), "already imported")
    manifest = checked_manifest(build_manifest(u, command))
    with UnitWriter(store, rid, manifest) as w:
        if w.already_complete:
            return ImportResult(rid, name, task, u.request_type, len(ids), "already imported")
        resumed = bool(w.done_ids)
        pending = [r for r in u.rows if r["sample_id"] not in w.done_ids]
        for i in range(0, len(pending), 1000):
            try:
                w.append(pending[i : i + 1000])
            except StoreError as e:
                raise StoreError(f"task {task}: imported rows do not fit the {u.request_type} schema: {e.message}",
                                 hint="this is an importer bug; please report it with the source file") from None
        w.finish(ids)
    return ImportResult(rid, name, task, u.request_type, len(ids), "resumed" if resumed else "imported")
