"""Rolling-loglikelihood (perplexity) metrics, aggregated at corpus level as lm-evaluation-harness does
(``weighted_perplexity`` / ``bits_per_byte`` aggregations over ``(loglikelihood, units)`` pairs):

- ``token_perplexity`` = exp(-sum logprob / sum tokens)
- ``word_perplexity``  = exp(-sum logprob / sum words)   (words: lm-eval's ``len(re.split(r"\\s+", doc))``,
                                                         counted by the task into ``n_words``)
- ``byte_perplexity``  = exp(-sum logprob / sum bytes)   (UTF-8 bytes of the scored text, ``n_bytes``)
- ``bits_per_byte``    = -sum logprob / sum bytes / ln 2
- ``tokens``           = number of scored tokens (a count, aggregated by sum)

Each row stores ``num`` (its summed logprob) and ``den`` (its units) next to its own ratio, so shards and
slices (``category``) aggregate exactly. A row with zero units does not apply.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from rescore.score.columns import to_float
from rescore.score.spec import metric


def _ratio(table: pa.Table, den_col: str, transform: str) -> dict[str, Any]:
    num = to_float(table.column("sum_logprob"))
    den = to_float(table.column(den_col))
    bad = np.isnan(num) | np.isnan(den) | (den <= 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r = num / den
        value = np.exp(-r) if transform == "exp_neg" else -r / np.log(2)
    value[bad] = np.nan
    return {"value": value, "num": np.where(bad, np.nan, num), "den": np.where(bad, np.nan, den)}


@metric("token_perplexity", version=1, request_type="rolling", columns=("sum_logprob", "n_tokens"),
        higher_is_better=False, aggregator="perplexity",
        description="exp(-sum logprob / sum tokens) over the corpus (slice)")
def token_perplexity(table: pa.Table) -> dict[str, Any]:
    return _ratio(table, "n_tokens", "exp_neg")


@metric("word_perplexity", version=1, request_type="rolling", columns=("sum_logprob", "n_words"),
        higher_is_better=False, aggregator="perplexity",
        description="exp(-sum logprob / sum words) (lm-eval word_perplexity)", lm_eval_key="word_perplexity,none")
def word_perplexity(table: pa.Table) -> dict[str, Any]:
    return _ratio(table, "n_words", "exp_neg")


@metric("byte_perplexity", version=1, request_type="rolling", columns=("sum_logprob", "n_bytes"),
        higher_is_better=False, aggregator="perplexity",
        description="exp(-sum logprob / sum bytes) (lm-eval byte_perplexity)", lm_eval_key="byte_perplexity,none")
def byte_perplexity(table: pa.Table) -> dict[str, Any]:
    return _ratio(table, "n_bytes", "exp_neg")


@metric("bits_per_byte", version=1, request_type="rolling", columns=("sum_logprob", "n_bytes"),
        higher_is_better=False, aggregator="bits_per_byte",
        description="-sum logprob / sum bytes / ln 2 (lm-eval bits_per_byte)", lm_eval_key="bits_per_byte,none")
def bits_per_byte(table: pa.Table) -> dict[str, Any]:
    return _ratio(table, "n_bytes", "bits")


@metric("tokens", version=1, request_type="rolling", columns=("n_tokens",), higher_is_better=True, aggregator="sum",
        description="number of scored tokens")
def tokens(table: pa.Table) -> np.ndarray:
    return to_float(table.column("n_tokens"))

