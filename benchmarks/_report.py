"""Lets the scripts run from a checkout and gives them the package's report helpers."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the scripts run from a checkout
    sys.path.insert(0, str(REPO))

from medsamlite.benchmark.report import (machine_header, markdown_table, stacked_bars,  # noqa: E402,F401
                                         write_csv, write_markdown)
