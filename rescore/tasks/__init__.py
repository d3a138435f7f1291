"""Task families and the prepared-data cache.

Families are classes decorated with :func:`task_family` (a name and a params model), registered in
:data:`families`: the built-in ones lazily, other packages' through the entry-point group
``rescore.task_families``. YAML names them (``family: multiple_choice`` or ``family: mypkg.tasks:MyFamily``)
and gives literals. The runner uses :func:`request_type`, :func:`build_requests` and
``rescore.tasks.data.get_task_data``.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from rescore.config import GenConfig, TaskConfig
from rescore.core import Request, RequestType, Tokenizer
from rescore.params import Params
from rescore.tasks.base import TaskFamily, families, param_problems, task_family, task_params

if TYPE_CHECKING:
    from rescore.tasks.data import TaskData

families.register_lazy("multiple_choice", "rescore.tasks.multiple_choice:MultipleChoice")
families.register_lazy("gsm8k", "rescore.tasks.gsm8k:GSM8K")
families.register_lazy("ppl_packed", "rescore.tasks.ppl:PackedPPL")
families.register_lazy("ppl_docs", "rescore.tasks.ppl:DocPPL")
families.register_lazy("sft_native", "rescore.tasks.sft_native:SFTNative")
families.register_lazy("lm_eval", "rescore.tasks.lm_eval:LmEval")


def request_type(task: TaskConfig, data: TaskData | None = None) -> RequestType:
    """The task's request type; families whose type depends on their rows (``lm_eval``) take the data."""
    fam: Any = families.get(task.family)
    if data is not None and "data" in inspect.signature(fam.request_type).parameters:
        return fam.request_type(task, data)
    return fam.request_type(task)


def gen_config(task: TaskConfig, data: TaskData) -> GenConfig | None:
    """The sampling parameters a family gives its generate task (lm-eval's generation kwargs), or None."""
    own = getattr(families.get(task.family), "gen_config", None)
    return own(task, data.rows) if own is not None else None


def build_requests(task: TaskConfig, data: TaskData, tokenizer: Tokenizer | None) -> list[Request]:
    """The task's requests for its prepared (or directly loaded) data. Deterministic."""
    from rescore.tasks.ppl import accepts_cache_dir

    fam: Any = families.get(task.family)
    if accepts_cache_dir(fam):
        requests = fam.build_requests(task, data.rows, data.fewshot_rows, tokenizer, cache_dir=data.path)
    else:
        requests = fam.build_requests(task, data.rows, data.fewshot_rows, tokenizer)
    if not requests:  # a unit of no rows would count as complete and score as nothing
        from rescore.errors import MissingDataError

        src = task.source.path or task.source.hf if task.source else "its built-in data"
        raise MissingDataError(f"task {task.name!r}: its {len(data.rows)} row(s) of {src} give no requests",
                               hint="check the task's params (a filter that matches no row?) and its data")
    return requests


__all__ = ["Params", "TaskFamily", "build_requests", "families", "param_problems", "request_type", "task_family",
           "task_params"]
