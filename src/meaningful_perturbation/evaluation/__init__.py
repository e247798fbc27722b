"""Evaluation drivers: the ShapeEvidence benchmark of every explanation method."""

from __future__ import annotations

from .benchmark import COLUMNS, DEFAULT_METHODS, METRICS, BenchmarkResult, run_benchmark

__all__ = ["BenchmarkResult", "COLUMNS", "DEFAULT_METHODS", "METRICS", "run_benchmark"]
