"""Reports: results tables, tier exports, comparisons and the HTML report. Imports no torch."""
