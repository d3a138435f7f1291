"""Which scored positions keep their distribution, and the arrays stored for them (``TaskConfig.dist``).

The positions of a row are numbered over its scored tokens: a loglikelihood row's choices' continuation
tokens one after the other, a rolling row's target tokens. ``answer`` and ``all`` select every one of them
(``answer`` only for loglikelihood rows), ``{every: N}`` one in N from an offset drawn from the sample id, so
the choice never depends on batches or on where a run resumed. The side files are
:mod:`rescore.artifacts.tensors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rescore.config import DistConfig
from rescore.core import Request, derive_seed
from rescore.errors import ConfigError


def selected(cfg: DistConfig, request_type: str, sample_id: str, n: int) -> np.ndarray:
    """Boolean mask over a row's ``n`` scored tokens."""
    if cfg.positions == "answer" and request_type != "loglikelihood":
        raise ConfigError(f"dist positions 'answer' select nothing in a {request_type} task",
                          hint="use positions: all or {every: N} for rolling tasks")
    every = cfg.every
    if every is None:
        return np.ones(n, bool)
    start = derive_seed(0, sample_id, 0) % every
    mask = np.zeros(n, bool)
    mask[start::every] = True
    return mask


def dist_arrays(cfg: DistConfig, lp: Any) -> dict[str, np.ndarray]:
    """The stored arrays of float32 log-softmax rows ``lp`` [n, V] (a torch tensor)."""
    import torch

    def store(x: Any) -> np.ndarray:
        if cfg.dtype == "bfloat16":
            return x.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
        return x.to(torch.float16).cpu().numpy()

    k = cfg.topk
    if k is None:
        return {"logprobs": store(lp)}
    v = lp.shape[-1]
    tv, ti = lp.topk(min(k, v), dim=-1)
    if k < v:
        # log(1 - head mass) in float64; where the head holds nearly all the mass that loses precision, so those
        # rows sum their tail exactly
        tail = torch.log1p(-tv.double().exp().sum(-1).clamp(max=1.0))
        close = tail < -6.0
        n_close = int(close.sum())
        if 2 * n_close >= len(close):  # most rows (a trained model's confident tokens): no copy of the rows
            tail = torch.where(close, tail_logmass(lp, tv, ti).double(), tail)
        elif n_close:
            idx = close.nonzero()[:, 0]
            tail[idx] = tail_logmass(lp[idx], tv[idx], ti[idx]).double()
    else:
        tail = torch.full((lp.shape[0],), float("-inf"))
    ids = ti.to(torch.int32).cpu().numpy()
    return {"topk_ids": ids.astype(np.uint16) if v <= 65536 else ids, "topk_logprobs": store(tv),
            "tail_logmass": tail.float().cpu().numpy()}


def tail_logmass(lp: Any, tv: Any, ti: Any) -> Any:
    """log of the probability outside the top K of log-softmax rows ``lp``, summed exactly: each entry relative to
    the K-th largest logprob (so no entry of the tail overflows and none underflows before the sum needs it),
    the top K's own entries zeroed by index (ties with the K-th value outside the top K are counted). A row whose
    sum comes to 0 (its K-th logprob is -inf, or its tail lies more than ~100 below it) takes a logsumexp of its
    tail instead: -inf only where the tail holds nothing."""
    import torch

    m = tv[:, -1:]
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # -inf - -inf would be NaN
    e = (lp - m).exp_()
    e.scatter_(1, ti, 0.0)
    s = e.sum(-1)
    out = s.log() + m[:, 0]
    if bool((s == 0).any()):
        idx = (s == 0).nonzero()[:, 0]
        out[idx] = torch.logsumexp(lp[idx].scatter(1, ti[idx], float("-inf")), dim=-1)
    return out


def row_dist(cfg: DistConfig, parts: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]], vocab: int
             ) -> dict[str, Any]:
    """A row's ``_dist`` from its spans in order: (positions selected in the span, their targets, arrays)."""
    nonempty = [p for p in parts if len(p[0])]
    out: dict[str, Any] = {
        "positions": np.concatenate([p[0] for p in nonempty]).astype(np.int32) if nonempty else np.zeros(0, np.int32),
        "targets": np.concatenate([p[1] for p in nonempty]).astype(np.int32) if nonempty else np.zeros(0, np.int32),
    }
    names = ["logprobs"] if cfg.topk is None else ["topk_ids", "topk_logprobs", "tail_logmass"]
    for k in names:
        arrs = [p[2][k] for p in nonempty]
        out[k] = np.concatenate(arrs) if arrs else empty_array(cfg, k, vocab)
    out["meta"] = {"vocab": vocab, "dtype": cfg.dtype, "format": "full" if cfg.topk is None else f"topk{cfg.topk}"}
    return out


def empty_array(cfg: DistConfig, name: str, vocab: int) -> np.ndarray:
    ld = np.uint16 if cfg.dtype == "bfloat16" else np.float16
    k = min(cfg.topk or vocab, vocab)
    return {"logprobs": np.zeros((0, vocab), ld), "topk_ids": np.zeros((0, k), np.uint16 if vocab <= 65536 else np.int32),
            "topk_logprobs": np.zeros((0, k), ld), "tail_logmass": np.zeros(0, np.float32)}[name]


def bytes_per_position(cfg: DistConfig, vocab: int) -> int:
    """Stored bytes per selected position (position and target included)."""
    if cfg.topk is None:
        return 8 + 2 * vocab
    k = min(cfg.topk, vocab)
    return 8 + 4 + k * (2 + (2 if vocab <= 65536 else 4))


def count_positions(rules: Any, requests: Sequence[Request], cfg: DistConfig) -> int:
    """How many positions of ``requests`` a task's ``dist`` selects (before anything runs), with the request
    rules (:class:`rescore.gen.units.RequestRules`: tokenizer and context window) of the model that runs them."""
    n = 0
    lls = [r for r in requests if r.request_type == "loglikelihood"]
    if lls:
        _, meta = rules.loglikelihood_plan(lls)
        n += sum(int(selected(cfg, "loglikelihood", r.sample_id, sum(len(c) for c in conts)).sum())
                 for r, (conts, _) in zip(lls, meta, strict=True))
    rolls = [r for r in requests if r.request_type == "rolling"]
    if rolls:
        _, targets = rules.rolling_plan(rolls)
        n += sum(int(selected(cfg, "rolling", r.sample_id, len(t)).sum()) for r, t in zip(rolls, targets, strict=True))
    return n


def fmt(cfg: DistConfig) -> str:
    return ("full" if cfg.topk is None else f"top-{cfg.topk}") + f", {cfg.dtype}"


def request_type_problem(task: str, request_type: str, cfg: DistConfig) -> ConfigError | None:
    """Why a task of ``request_type`` cannot store distributions as ``cfg`` asks (None: it can)."""
    if request_type == "generate":
        return ConfigError(f"task {task!r}: dist is for loglikelihood and rolling tasks, not generate",
                           hint=f"remove dist from task {task!r}")
    if cfg.positions == "answer" and request_type != "loglikelihood":
        return ConfigError(f"task {task!r}: dist positions 'answer' select nothing in a {request_type} task",
                           hint="use positions: all or {every: N}")
    return None


def size_problem(task: str, cfg: DistConfig, n: int, size: int, rows: int) -> ConfigError | None:
    """Why ``gen`` refuses a unit whose distributions take ``size`` bytes at ``n`` positions (None: it runs)."""
    if n == 0:
        return ConfigError(f"task {task!r}: dist positions {cfg.positions!r} select no token of its {rows} rows",
                           hint="select more positions (all, or a smaller every: N)")
    if size > cfg.max_bytes_per_unit:
        return ConfigError(f"task {task!r}: its stored distributions would take about {human_bytes(size)} "
                           f"({n:,} positions), over the {human_bytes(cfg.max_bytes_per_unit)} per unit allowed",
                           hint=f"raise it (-O tasks.{task}.dist.max_bytes_per_unit=N), store topk instead "
                                "of full, or select fewer positions (every: N)")
    return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"


__all__ = ["bytes_per_position", "count_positions", "dist_arrays", "human_bytes", "request_type_problem", "row_dist",
           "selected", "size_problem"]
