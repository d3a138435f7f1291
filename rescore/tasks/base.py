"""Task families: where rows come from and how a row becomes a :class:`~rescore.core.Request`.

A family is a registered Python object; YAML names it (``family: multiple_choice``) and gives literals.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from rescore.config import TaskConfig
from rescore.core import Request, RequestType, Tokenizer
from rescore.registry import Registry


class TaskFamily(Protocol):
    name: str

    def request_type(self, task: TaskConfig) -> RequestType: ...

    def check(self, task: TaskConfig) -> list[str]:
        """Problems with the task's family-specific settings (``params`` etc.), one line each."""
        ...

    def load_rows(self, task: TaskConfig, data_root: Path | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Read the raw rows (and the few-shot pool) from the task's source. Used by ``prepare`` and by
        direct loading; may need the network for Hugging Face sources."""
        ...

    def build_requests(
        self,
        task: TaskConfig,
        rows: Sequence[dict[str, Any]],
        fewshot_rows: Sequence[dict[str, Any]],
        tokenizer: Tokenizer | None,
    ) -> list[Request]:
        """Turn prepared rows into requests. Deterministic: same inputs, same requests, same sample ids."""
        ...


families: Registry[TaskFamily] = Registry("task family")
