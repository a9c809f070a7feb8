"""``fusec bench``: end-to-end measurements of compiled models (DESIGN §8).

For every configuration ``(model, seq, true batch, gates, GPUs)`` the bench does what a
user would do, each stage in its own process so that a crash or an out-of-memory kill
is contained and reported: export the model (random weights, cached in the work dir),
``fusec compile``, the dealer (``count = (warm-up + repeat) x internal batch`` key sets),
then P0 and P1 as two long-lived workers over loopback TCP. A *step* is ``internal
batch`` consecutive key sets evaluated back to back over the one connection; the first
``warmup`` steps are discarded and the median of the others is reported, per step, per
batch (one true-batch forward = one key set) and per inference (per batch / true batch);
``tokens/s = batch x internal batch x seq / step time``.

A configuration that cannot run on this machine (keys larger than the free space where
they go, less memory than one key set per party, an out-of-memory death, a compile the
compiler refuses) is recorded as ``{"skipped": reason}`` and the
bench goes on; any other failure stops it with the configuration's name and the
failing party's stderr tail (or is recorded, with ``--keep-going``). No wait is
unbounded: every stage has ``--timeout``, after which both workers are killed.

One module per job:

- :mod:`.presets` -- the named models and ``--model`` parsing
- :mod:`.plan` -- the options and the grid of configurations
- :mod:`.stage` -- one stage as a subprocess (time limit, log); :mod:`.failures` -- which
  failures are skips
- :mod:`.export`, :mod:`.compile` -- the model file and the build, both cached
- :mod:`.keys` -- where key sets go (up front or per step) and whether they fit
- :mod:`.dealers` -- ``--dealers N`` dealer processes; :mod:`.keygen` -- the dealer process;
  :mod:`.stream_dealer` -- ``--keys stream``: one dealer serving sets over loopback, no files
- :mod:`.pair` -- the two party workers, bench side; :mod:`.worker` -- the worker itself
- :mod:`.merge` -- both parties' records -> one step; medians (DESIGN §7)
- :mod:`.run` -- one configuration end to end, and the whole run; :mod:`.machine` -- where
- :mod:`.markdown` -- tables for BENCHMARKS.md; :mod:`.cli` -- ``fusec bench`` and
  ``python -m fusec.bench serve|keygen``

Importing the package needs only the standard library (the workers import the runtime).
"""
from __future__ import annotations

from fusec.bench.failures import SKIPPABLE, BenchError, classify_failure
from fusec.bench.keys import KeyPlan, plan_keys
from fusec.bench.markdown import render_markdown
from fusec.bench.merge import merge_parties, scope_metric, summarize
from fusec.bench.pair import PartyPair
from fusec.bench.plan import GATE_SETS, BenchOptions, Case, plan_cases
from fusec.bench.presets import PRESETS, ModelSpec, resolve_model
from fusec.bench.run import FORMAT, run_bench, run_case

__all__ = [
    "FORMAT", "GATE_SETS", "PRESETS", "SKIPPABLE",
    "BenchError", "BenchOptions", "Case", "KeyPlan", "ModelSpec", "PartyPair",
    "classify_failure", "merge_parties", "plan_cases", "plan_keys", "render_markdown", "resolve_model",
    "run_bench", "run_case", "scope_metric", "summarize",
]
