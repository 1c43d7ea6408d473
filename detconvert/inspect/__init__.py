"""Describe a weight file without building a model: architecture read off the blob names and shapes,
the embedded cfg summarised and cross-checked, and what the file can be used for. Needs no torch."""
from detconvert.inspect.report import Architecture, Inspection, inspect_weights, read_architecture

__all__ = ["Architecture", "Inspection", "inspect_weights", "read_architecture"]
