"""Scoring: extract -> per-row metric -> aggregate, pure functions over Arrow columns. Imports no torch."""
