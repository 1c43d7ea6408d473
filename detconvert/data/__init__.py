"""Batching for detection: per-device padding and aspect-ratio-grouped batch samplers."""
