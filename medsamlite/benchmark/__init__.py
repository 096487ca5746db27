"""Benchmarks: run models over task cases and compare DSC, NSD, runtime and peak memory (`medsamlite bench`)."""
from .compare import BenchConfig, BenchResult, run_bench

__all__ = ["BenchConfig", "BenchResult", "run_bench"]
