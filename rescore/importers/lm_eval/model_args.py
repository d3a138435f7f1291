"""The model an lm-eval run evaluated: its ``model_args`` (the one parser of them) and its identity."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rescore.importers.common import (
    checked_name,
    precision_of,
    safe_name,
)

if TYPE_CHECKING:
    from rescore.importers.lm_eval.runs import Options


# -- model and task identity --------------------------------------------------------------------------
def parse_model_args(raw: Any, *, as_text: bool = False) -> dict[str, Any]:
    """lm-eval's ``model_args`` as a dict: 0.4.x writes a dict or a ``k=v,k=v`` string (a part without ``=``
    is a key with an empty value). With ``as_text`` keys and values are strings."""
    out: dict[str, Any] = {}
    if isinstance(raw, dict):
        out = dict(raw)
    elif isinstance(raw, str):
        for part in filter(None, (x.strip() for x in raw.split(","))):
            k, _, v = part.partition("=")
            out[k.strip()] = v.strip()
    return {str(k): str(v) for k, v in out.items()} if as_text else out


def model_args(res: dict[str, Any]) -> dict[str, Any]:
    """The ``model_args`` of an lm-eval results file (see :func:`parse_model_args`)."""
    return parse_model_args((res.get("config") or {}).get("model_args"))


def model_identity(res: dict[str, Any], opts: Options) -> dict[str, Any]:
    cfg = res.get("config") or {}
    args = model_args(res)
    path = args.get("pretrained") or args.get("model") or res.get("model_name") or cfg.get("model")
    if opts.model_name:
        name = checked_name(opts.model_name, "model name")
    else:
        base = Path(str(path)).name if path else str(cfg.get("model") or "model")
        name = safe_name(base or "model", "model name")
    precision = precision_of(args.get("dtype") or _torch_dtype(cfg.get("model_dtype")),
                             load_in_8bit=args.get("load_in_8bit"), load_in_4bit=args.get("load_in_4bit"))
    return {
        "name": name, "path": str(path) if path is not None else None, "backend": f"lm-eval:{cfg.get('model')}",
        "precision": precision, "step": opts.step, "stage": opts.stage,
        "args": {k: str(v) for k, v in sorted(args.items())},
        "dtype": _torch_dtype(cfg.get("model_dtype")), "revision": cfg.get("model_revision"), "sha": cfg.get("model_sha"),
        "chat_template_sha": res.get("chat_template_sha"),
    }


def _torch_dtype(s: Any) -> str | None:
    return str(s).removeprefix("torch.") if s else None


def chat_applied(res: dict[str, Any]) -> bool:
    return bool(res.get("chat_template"))
