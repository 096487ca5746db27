"""Benchmarks: the suites behind `medsamlite bench SUITE` (compare, precision, latency, ...).

Each suite module has `add_arguments(parser)` and `run(args)`; `report` (CSV, markdown, charts) is torch-free,
so `medsamlite evaluate` uses it in the runtime-only install. The supported surface is the command, not these
modules.
"""

__all__: list[str] = []
