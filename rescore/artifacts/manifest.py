"""The typed manifest of a generation unit (``<store>/gen/<run_id>/manifest.json``).

Both producers (``rescore gen`` through :mod:`rescore.gen.runner` and every importer through
:mod:`rescore.importers.common`) build a :class:`Manifest`, and the writer checks it before writing
(:func:`checked_manifest`): a manifest that does not fit is a programming error naming the field.

The on-disk JSON stays what it was: :meth:`Manifest.to_json` writes exactly the fields that were set (so
the same inputs give the same bytes), and keys this model does not know (written by older or newer
versions) are kept (``extra="allow"``) and written back unchanged. Older manifests load: every field but
``request_type`` is optional.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rescore.errors import CorruptArtifactError, StoreError

UnitStatus = str


class _Open(BaseModel):
    """A part of the manifest: typed where known, every other key kept as it is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready dict of the fields that were set (and the unknown keys), nothing more."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class ModelInfo(_Open):
    """The checkpoint's identity as generated or imported, and what its backend describes of it."""

    name: str | None = None
    path: str | None = None
    backend: str | None = None
    precision: str | None = None
    dtype: str | None = None
    step: int | None = None
    stage: str | None = None
    fingerprint: str | None = None
    tokenizer_hash: str | None = None
    options: dict[str, Any] | None = None
    args: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None


class TaskInfo(_Open):
    name: str | None = None
    family: str | None = None
    tier: str | int | None = None
    config: dict[str, Any] | None = None


class Runtime(_Open):
    """How the unit ran (not part of its identity)."""

    batch_size: int | str | None = None
    max_batch_tokens: int | None = None
    device: str | None = None


class ImportInfo(_Open):
    """Where an imported unit's rows came from."""

    kind: str | None = None
    importer_version: int | str | None = None
    outputs_fp: str | None = None
    sources: list[dict[str, Any]] | None = None


class Manifest(_Open):
    """One unit's manifest. ``import`` is :attr:`import_info` in Python."""

    schema_version: int | None = None
    status: UnitStatus | None = None
    run_id: str | None = None
    request_type: str
    model: ModelInfo = Field(default_factory=ModelInfo)
    suite: str | None = None
    task: TaskInfo = Field(default_factory=TaskInfo)
    data_fp: str | None = None
    data_meta: Any = None
    data_root: str | None = None
    seed: int | None = None
    gen: dict[str, Any] | None = None
    resolved: dict[str, Any] | None = None
    runtime: Runtime | None = None
    import_info: ImportInfo | None = Field(default=None, alias="import")
    versions: dict[str, Any] | None = None
    git_rev: str | None = None
    host: str | None = None
    platform: str | None = None
    command: str | None = None
    pid: int | None = None
    created_at: str | None = None
    completed_at: str | None = None
    resumes: int | None = None
    timings: dict[str, Any] | None = None
    rows_total: int | None = None
    rows_done: int | None = None
    rows_parquet_sha256: str | None = None
    rows_parquet_bytes: int | None = None
    rows_parquet_footer: int | str | None = None
    page_checksums: bool | None = None

    @property
    def precision(self) -> str | None:
        """The checkpoint's precision (``model.precision``)."""
        return self.model.precision

    @classmethod
    def build(cls, fields: dict[str, Any]) -> Manifest:
        """A new manifest from a producer's fields; fields that do not fit are a programming error naming them."""
        try:
            return cls.model_validate(fields)
        except ValidationError as e:
            raise StoreError(f"refusing to build a malformed unit manifest: {_first_error(e)}",
                             hint="this is a bug in the code that built the manifest; please report it") from None

    @classmethod
    def load(cls, data: Any, where: str = "manifest") -> Manifest:
        """A manifest read from disk; one that does not fit is a damaged file named by ``where``."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise CorruptArtifactError(f"{where} is not a unit manifest ({_first_error(e)})",
                                       hint="`rescore verify` lists damaged units; remove the unit's directory "
                                            "and run the same command to regenerate it") from None


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "manifest"
    return f"{loc}: {err['msg']}" + (f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else "")


def checked_manifest(manifest: Manifest | dict[str, Any]) -> dict[str, Any]:
    """The JSON dict to write for ``manifest``, checked against :class:`Manifest`. A manifest that does not fit
    is a programming error (a producer out of step with the model) and names the field."""
    if isinstance(manifest, Manifest):
        manifest = manifest.to_json()
    try:
        Manifest.model_validate(manifest)
    except ValidationError as e:
        raise StoreError(f"refusing to write a malformed unit manifest: {_first_error(e)}",
                         hint="this is a bug in the code that built the manifest; please report it") from None
    return manifest
