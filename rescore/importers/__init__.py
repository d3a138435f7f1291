"""Importers: turn other tools' outputs (lm-evaluation-harness samples, generic JSONL, token tensors) into
store units that ``rescore score`` scores like generated ones. See ``rescore import --help``."""
