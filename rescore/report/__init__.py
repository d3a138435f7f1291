"""Reports: results tables, tier exports, comparisons and the HTML report. Imports no torch."""

MAX_RESAMPLES = 1_000_000  # bootstrap resamples: beyond this the CI moves by less than its own Monte Carlo noise
