"""rescore: generate once on a GPU, score forever on a CPU."""

__version__ = "0.1.0"
