"""Helpers shared by the task families: deterministic subsets and few-shot draws, sample ids, source
loading with schema conversion, and the checks every family runs on its settings.

Subsets and few-shot draws rank candidates by a sha256 of (seed, key) instead of ``random``: the result
is the same on every Python version, and a larger subset contains every row of a smaller one. The one
exception is the ``lm_eval_default`` few-shot sampler, which reproduces lm-eval's shared ``random.Random``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field

from rescore.config import TaskConfig
from rescore.errors import ConfigError
from rescore.params import Params, known_params
from rescore.tasks.base import param_problems
from rescore.tasks.schemas import convert, schemas
from rescore.tasks.sources import iter_hf, read_local, require_exists, resolve_path

IDX = "_idx"  # key of a row's index in its source split (rows keep it through prepare)

P = TypeVar("P", bound=Params)


class SourceParams(Params):
    """Params of every family that reads a source: the layout of its rows."""

    schema_: str = Field("hf", alias="schema", description="row layout of the source (rescore.tasks.schemas)")


def stable_rank(seed: int | str, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()


def subset_indices(n: int, size: int | None, seed: int) -> list[int]:
    """Indices of the rows kept by ``subset_size``, ascending.

    Every row ``i`` gets the rank ``sha256(f"{seed}\\x1f{i}")``; the ``size`` lowest ranks are kept. All
    rows when ``size`` is None or at least ``n``.
    """
    if size is None or size >= n:
        return list(range(n))
    ranked = sorted(range(n), key=lambda i: stable_rank(seed, str(i)))
    return sorted(ranked[:size])


def sample_id(row: dict[str, Any]) -> str:
    """Stable per source row: the zero-padded index of the row in its source split."""
    return f"{int(row[IDX]):08d}"


def draw_fewshot(
    pool: Sequence[dict[str, Any]], n: int, *, seed: int, key: str, sampler: str, exclude: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """``n`` few-shot rows for the eval row ``key``.

    ``first_n``: the first n rows of the pool (lm-eval's sampler for MMLU). ``random``: the n lowest ranks
    of ``sha256(seed, key, pool index)``, so each eval row has its own draw that does not depend on the
    others (lm-eval draws from one shared RNG, so its exact picks cannot be reproduced row by row). A pool
    row equal to the eval row is never used.
    """
    if n <= 0:
        return []
    cands = [r for r in pool if exclude is None or _content(r) != _content(exclude)]
    if sampler == "first_n":
        return list(cands[:n])
    order = sorted(range(len(cands)), key=lambda j: stable_rank(seed, f"{key}\x1f{j}"))
    return [cands[j] for j in order[:n]]


class FewshotDrawer:
    """Few-shot draws of one task, in the order of its eval rows.

    ``random`` and ``first_n`` are :func:`draw_fewshot` (each row's draw stands on its own).
    ``lm_eval_default`` is lm-eval's default sampler: one ``random.Random(seed)`` per pool (an MMLU subject is a
    task of its own there) drawn from in row order, ``n`` rows per eval row, or ``n + 1`` with the eval row
    taken out when the pool is the eval split. Its draws depend on every row before, so they equal lm-eval's
    when the rows are lm-eval's documents in order (the whole split or its first N; not a ``subset_size``
    sample) and the requests are built in that order, which :meth:`draw` requires.
    """

    def __init__(self, sampler: str, seed: int) -> None:
        self.sampler, self.seed = sampler, seed
        self._rngs: dict[Any, random.Random] = {}

    def draw(self, pool: Sequence[dict[str, Any]], n: int, *, key: str, exclude: dict[str, Any] | None,
             group: Any = None) -> list[dict[str, Any]]:
        if self.sampler != "lm_eval_default":
            return draw_fewshot(pool, n, seed=self.seed, key=key, sampler=self.sampler, exclude=exclude)
        if n <= 0:
            return []
        rng = self._rngs.setdefault(group, random.Random(self.seed))
        pool = list(pool)
        need = n if exclude is None else n + 1
        if need > len(pool):
            raise ConfigError(f"{n} few-shot examples asked for, but the few-shot pool has {len(pool)} rows",
                              hint="lower num_fewshot or give a larger few-shot split")
        if exclude is None:
            return rng.sample(pool, n)
        other = _content(exclude)
        picked = [r for r in rng.sample(pool, n + 1) if _content(r) != other][:n]
        if len(picked) < n:  # the pool holds copies of the eval row: lm-eval draws again without any of them
            picked = rng.sample([r for r in pool if _content(r) != other], n)
        return picked


def _content(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != IDX}


def load_records(task: TaskConfig, data_root: Path | None, *, fewshot: bool, prompt: str,
                 schema: str = "hf") -> list[dict[str, Any]]:
    """Rows of the task's source (or of its few-shot split/file) in the Hugging Face schema (converted from
    ``schema``), each with ``_idx`` = its position in the source split. Empty when a few-shot pool is asked
    for but none is set."""
    src = task.source
    assert src is not None
    if src.path is not None:
        rel = src.fewshot_path if fewshot else src.path
        if rel is None:
            return []
        path = require_exists(resolve_path(rel, data_root), f"data file of task {task.name!r}")
        records = convert(schema, read_local(path, src.format), prompt)
    else:
        split = src.fewshot_split if fewshot else src.split
        if split is None:
            return []
        records = list(iter_hf(src, split))
        if schema != "hf":
            records = convert(schema, records, prompt)
    return [{**r, IDX: i} for i, r in enumerate(records)]


def check_common(task: TaskConfig, model: type[P]) -> tuple[list[str], P | None]:
    """Problems of ``task.params`` against ``model`` (unknown keys, wrong types, a schema that is not
    registered), and the params without their unknown keys (None when those are not valid either), so a
    family's own checks run on them and every problem is reported at once."""
    problems = param_problems(task, model)
    p = known_params(model, task.params)
    schema = getattr(p, "schema_", None) if p is not None else None
    if schema is not None and schema not in schemas:
        problems.append(f"task {task.name}: unknown params.schema {schema!r} (choices: {schemas.names()})")
    return problems, p
