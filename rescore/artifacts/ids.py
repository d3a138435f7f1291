"""Content-derived ids: two machines that run the same work produce the same paths."""

from __future__ import annotations

from typing import Any

from rescore.artifacts.schema import SCHEMA_VERSION
from rescore.core import content_hash


def run_id(resolved: dict[str, Any]) -> str:
    """The id of a generation unit: a hash of its resolved config plus the schema version."""
    return content_hash({"resolved": resolved, "schema_version": SCHEMA_VERSION}, 20)
