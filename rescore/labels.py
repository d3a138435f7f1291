"""One label per checkpoint that tells checkpoints apart in every table, report and listing.

A checkpoint is known by its model name, its step, its precision and its path. The label is ``name@step``
(``name`` when it has no step or the name already ends with it, as a matrix's ``stage1-step300``); where
two checkpoints would share a label, ``[precision]`` and then ``[path]`` are added until each is unique.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CheckpointIdent:
    """What identifies a checkpoint in a label."""

    name: str
    step: int | None = None
    precision: str | None = None
    path: str | None = None


def names_step(name: str, step: int) -> bool:
    """Whether ``name`` ends with its step (``stage1-step300``, ``ckpt_300``)."""
    return re.search(rf"(?:^|[-_.@]|step)0*{step}$", name) is not None


def base_label(name: str, step: int | None, *, spaced: bool = False) -> str:
    """``name@step`` (``name @ step N`` when ``spaced``, for headings), or ``name`` when there is no step or
    the name already ends with it."""
    if step is None or names_step(name, step):
        return name
    return f"{name} @ step {step}" if spaced else f"{name}@{step}"


def checkpoint_labels(idents: Sequence[CheckpointIdent], *, spaced: bool = False) -> list[str]:
    """A label per item of ``idents`` (same order): the base label, with ``[precision]`` and then ``[path]``
    added where needed to tell apart checkpoints that would otherwise share one. Equal idents share a label."""
    labels = [base_label(c.name, c.step, spaced=spaced) for c in idents]
    for part in ("precision", "path"):
        groups: dict[str, set[CheckpointIdent]] = {}
        for lab, c in zip(labels, idents, strict=True):
            groups.setdefault(lab, set()).add(c)
        labels = [f"{lab}[{getattr(c, part)}]" if len(groups[lab]) > 1 else lab
                  for lab, c in zip(labels, idents, strict=True)]
    return labels
