"""The metric ``shows_work``: candidate 0 writes the sum out (``a + b = c``) before its answer."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from rescore.score import metric


@metric(version=1, request_type="generate", columns=["candidates"])
def shows_work(table: pa.Table) -> np.ndarray:
    """Candidate 0 shows its working ("="), 1 or 0; NaN for a row without candidates."""
    return np.array([float("=" in c[0]) if c else np.nan for c in table.column("candidates").to_pylist()])
