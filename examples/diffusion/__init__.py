"""A worked example of your own generator as a rescore backend: a small masked-diffusion-style sampler.

:mod:`.sampler` fills a canvas of mask tokens after the prompt by iterative unmasking (methods
``confidence`` and ``random``); :mod:`.backend` wraps it in rescore's Backend protocol. Run it from the
repository root (or with the root on ``PYTHONPATH``)::

    rescore gen SUITE --model CHECKPOINT --backend examples.diffusion:Backend

or with a models YAML that picks the method (each method is a model of its own, a unit of its own)::

    models:
      - {name: diff-confidence, path: CHECKPOINT, backend: examples.diffusion:Backend, options: {method: confidence}}
      - {name: diff-random, path: CHECKPOINT, backend: examples.diffusion:Backend, options: {method: random}}

Nothing here imports torch until a backend is made, so ``rescore gen`` checks the options first.
"""

from .backend import DiffusionBackend, DiffusionOptions
from .sampler import METHODS, Canvas, schedule, unmask

Backend = DiffusionBackend

__all__ = ["METHODS", "Backend", "Canvas", "DiffusionBackend", "DiffusionOptions", "schedule", "unmask"]
