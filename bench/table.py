#!/usr/bin/env python
"""Markdown for BENCHMARKS.md from ``fusec bench`` JSON (date, machine, exact command,
one row per configuration, fused/sigma ratios, per-scope tables).

    python bench/table.py bench.json [more.json ...] >> BENCHMARKS.md

The rendering is :func:`fusec.bench.render_markdown` (``fusec bench --markdown`` writes
the same text); several files (e.g. a 1-GPU and a 2-GPU run) give one section each.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fusec.bench import render_markdown


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="+", type=Path, help="fusec bench JSON file(s)")
    a = p.parse_args(argv)
    print("\n".join(render_markdown(json.loads(path.read_text())) for path in a.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
