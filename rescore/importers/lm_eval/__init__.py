"""Import lm-evaluation-harness (0.4.x) output written with ``--log_samples``.

An output directory holds, per run, ``results_<date>.json`` and ``samples_<task>_<date>.jsonl`` for each
task (lm-eval writes them under ``<output_path>/<model_name_sanitized>/``; any depth is searched). Each task
with a samples file becomes one unit:

- ``multiple_choice`` -> ``loglikelihood`` rows: per choice the loglikelihood sum and greedy flag exactly as
  lm-eval saved them (it writes them as strings; Python's float repr round-trips). Per-token logprobs and
  token counts are not in the samples, so ``choice_logprobs``/``choice_n_tokens`` are null and
  ``per_token_available`` is false. The gold index is lm-eval's (``target``), for partial scoring
  (winogrande style, where lm-eval's target is the shared continuation) the config's ``doc_to_text``
  feature, else deduced from lm-eval's own per-sample ``acc``. lm-eval's ``acc_norm`` divides by the length
  of its choice string, which is the continuation without the target delimiter (or, for partial scoring, the
  per-choice context without the few-shot prefix); those lengths are pinned in the row's meta
  (``choice_chars``/``choice_bytes``) so the scorer uses exactly them.
- ``loglikelihood`` (a single continuation, e.g. lambada) -> ``loglikelihood`` rows with one choice and no
  gold (rescore has no greedy-accuracy metric; the greedy flag is stored).
- ``loglikelihood_rolling`` -> ``rolling`` rows: the document loglikelihood, and the word and byte counts
  lm-eval used (its per-sample ``word_perplexity``/``byte_perplexity`` pairs; else counted on the target).
- ``generate_until`` -> ``generate`` rows: the raw responses before filters (one candidate per repeat), the
  doc, the target and, for GSM8K-style targets, ``meta["answer"]``.

Every row's meta keeps lm-eval's document and per-sample metric values (``lm_eval``: ``{"acc,none": 1.0,
...}``), and the import checks that rescore's acc/acc_norm agree with them row by row (``import.checks`` in
the manifest). ``rescore score`` gives the units the ``lm-eval.*`` metrics of generated ``lm_eval`` units by
recomputing them with lm-eval's task (:mod:`rescore.tasks.lm_eval.imported`); ``Options.include_path``
(``--include-path``) is where the run's own task YAMLs are, recorded in the task config.
"""

from rescore.importers.lm_eval.importer import build_units, import_lm_eval
from rescore.importers.lm_eval.mapping import (
           OUTPUT_TYPES,
           Checks,
           generate_rows,
           loglikelihood_rows,
           mc_rows,
           rolling_rows,
)
from rescore.importers.lm_eval.model_args import chat_applied, model_args, model_identity, parse_model_args
from rescore.importers.lm_eval.runs import RESULTS_RE, LmEvalRun, Options, find_runs
from rescore.importers.lm_eval.samples import SAMPLE_KEYS, Sample, read_samples

__all__ = ["import_lm_eval", "find_runs", "read_samples", "Options", "LmEvalRun", "build_units", "parse_model_args",
           "model_args", "model_identity", "chat_applied", "Sample", "SAMPLE_KEYS", "RESULTS_RE", "OUTPUT_TYPES",
           "Checks", "mc_rows", "loglikelihood_rows", "rolling_rows", "generate_rows"]
