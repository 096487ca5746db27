"""What each precision costs and buys, per model, on OpenVINO (see `medsamlite.benchmark.precision`).

    python benchmarks/precision.py --models litemedsam --out benchmarks/results/precision
    medsamlite bench --precision-sweep        # the same sweep from the installed package
"""
from __future__ import annotations

import sys

from _report import REPO  # noqa: F401  (puts the checkout on sys.path)

from medsamlite.benchmark.precision import main

if __name__ == "__main__":
    sys.exit(main())
