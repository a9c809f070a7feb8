#!/usr/bin/env python
"""PNG plots of ``fusec bench`` results: moved to ``python -m fusec.bench.plots`` (fusec/bench/plots.py,
which documents the plots); this script stays for the command lines already written down.

    python bench/plot.py bench.json [more.json ...] -o plots/
"""
from __future__ import annotations

import sys
from pathlib import Path

from fusec.bench.plots import main
from fusec.bench.plots import plot_all as _plot_all


def plot_all(paths: list[Path], out: Path) -> list[Path]:
    """The PNG files written (the notes on skipped plots go to the command line only)."""
    return _plot_all(paths, out)[0]


if __name__ == "__main__":
    sys.exit(main())
