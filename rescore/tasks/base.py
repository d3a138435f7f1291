"""Task families: where rows come from and how a row becomes a :class:`~rescore.core.Request`.

A family is a class decorated with :func:`task_family`, which names it and gives its params model (a
:class:`~rescore.params.Params`: ``extra="forbid"``, defaults in the model). YAML names it
(``family: multiple_choice``, or ``family: mypkg.tasks:MyFamily`` for a class that is not registered) and
gives literals in ``params``. Other packages register families through the entry-point group
``rescore.task_families`` (``my_family = "mypkg.tasks:MyFamily"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from rescore.config import TaskConfig
from rescore.core import Request, RequestType, Tokenizer
from rescore.errors import ConfigError
from rescore.params import NoParams, Params, params_problems, parse_params
from rescore.registry import Registry

P = TypeVar("P", bound=Params)


class TaskFamily(Protocol):
    name: str
    params_model: type[Params]

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


def _family(obj: Any) -> TaskFamily:
    """A registered (or ``module:attr``) family: a decorated class is instantiated."""
    fam = obj() if isinstance(obj, type) else obj
    missing = [m for m in ("request_type", "check", "load_rows", "build_requests") if not callable(getattr(fam, m, None))]
    if missing or not isinstance(getattr(fam, "params_model", None), type):
        what = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"
        raise ConfigError(f"{what} is not a task family (it lacks {', '.join(missing) or 'a params model'})",
                          hint="decorate a class with @rescore.tasks.task_family(NAME, params=ParamsModel)")
    return fam


families: Registry[TaskFamily] = Registry("task family", group="rescore.task_families", coerce=_family)


def task_family(name: str, *, params: type[Params] = NoParams) -> Any:
    """Class decorator that registers a task family under ``name`` with its params model::

        class CountParams(Params):
            n: int = 8

        @task_family("count", params=CountParams)
        class Count:
            def request_type(self, task): return "generate"
            def check(self, task): return param_problems(task, CountParams)
            ...

    The class is returned unchanged, with ``name`` and ``params_model`` set."""

    def deco(cls: type) -> type:
        cls.name = name  # type: ignore[attr-defined]
        cls.params_model = params  # type: ignore[attr-defined]
        families.register(name, _family(cls))
        return cls

    return deco


def task_params(task: TaskConfig, model: type[P]) -> P:
    """``task.params`` as the family's params model (a one-line :class:`ConfigError` when they are not valid;
    ``rescore validate`` and suite loading report them before anything runs)."""
    return parse_params(model, task.params, component=f"task {task.name} (family {task.family})", what="param")


def param_problems(task: TaskConfig, model: type[Params]) -> list[str]:
    """Problems of ``task.params`` against the family's params model, one line each."""
    return params_problems(model, task.params, component=f"task {task.name} (family {task.family})", what="param")
