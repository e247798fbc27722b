"""Evaluation drivers: the ShapeEvidence benchmark of every explanation method."""

from __future__ import annotations

from .benchmark import COLUMNS, DEFAULT_METHODS, METRICS, BenchmarkResult, parse_variant, run_benchmark

__all__ = ["BenchmarkResult", "COLUMNS", "DEFAULT_METHODS", "METRICS", "parse_variant", "run_benchmark"]
