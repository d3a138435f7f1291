"""Generation: backends behind one Protocol, checkpoint loaders, the request rules every backend shares, and
the runner that fills the store.

The extension API (nothing here imports torch)::

    from rescore.gen import backend, loader, Params, RunContext, Loaded

- :func:`backend` registers a backend class ``(ModelConfig) -> Backend`` (entry-point group ``rescore.backends``);
- :func:`loader` registers a checkpoint loader ``(ModelConfig, options) -> Loaded`` (group ``rescore.loaders``);
- :class:`RequestRules` (tokenisation, loglikelihood and rolling units, generation prompts) and the row
  builders (:func:`loglikelihood_row`, :func:`rolling_row`, :func:`generate_row`) give a new backend the
  rows the others write.
"""

from rescore.gen.base import Backend, RunContext, backend, backend_options, backends, check_model, make_backend
from rescore.gen.loaders import Loaded, Loader, loader, loader_options, loaders
from rescore.gen.rows import Candidate, RowCollector, generate_row, loglikelihood_row, rolling_row
from rescore.gen.units import RequestRules, Span, SpanResult, Unit, plan_batches, render_prompt
from rescore.params import Params

__all__ = ["Backend", "Candidate", "Loaded", "Loader", "Params", "RequestRules", "RowCollector", "RunContext", "Span",
           "SpanResult", "Unit", "backend", "backend_options", "backends", "check_model", "generate_row", "loader",
           "loader_options", "loaders", "loglikelihood_row", "make_backend", "plan_batches", "render_prompt",
           "rolling_row"]
