"""Small helpers every bench module uses: ordered de-duplication and human-readable numbers."""
from __future__ import annotations

from typing import Iterable

import click


def unique(items: Iterable) -> list:
    """The items in first-seen order, without repeats."""
    return list(dict.fromkeys(items))


def tail(text: str, lines: int = 25) -> str:
    """The last ``lines`` lines of a log, for an error message."""
    return "\n".join(text.strip().splitlines()[-lines:])


def gb(n: float | None) -> str:
    """Bytes as GB / MB / KB / B (decimal units), "-" for unknown."""
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def secs(v: float | None) -> str:
    """Seconds for a table cell, "-" for unknown."""
    if v is None:
        return "-"
    return f"{v:.3f} s" if v < 100 else f"{v:,.0f} s"


def _backfilled(result: dict, doc: dict) -> dict:
    """``result`` with ``config.runtime`` (and its name tag) and ``config.stripes``, which files
    written before the bench recorded them get from their workers' options."""
    from fusec.bench.plan import RUNTIME_TAGS, runtime_of, stripes_of

    c = result.get("config")
    if not isinstance(c, dict):
        return result
    argv = (doc.get("settings") or {}).get("party_argv") or []
    if "stripes" not in c:
        c = dict(c, stripes=stripes_of(argv))
    if "runtime" in c:
        return dict(result, config=c)
    rt = runtime_of(argv)
    name = c.get("name", "")
    if rt in RUNTIME_TAGS and name:
        name = f"{name}/{RUNTIME_TAGS[rt]}"
    return dict(result, config=dict(c, runtime=rt, name=name))


def load_results(paths) -> tuple[list[dict], list[dict]]:
    """The results of several ``fusec bench`` JSON files, merged (e.g. a fused and a sigma
    run, or a 1-GPU and a 2-GPU run), and the documents themselves. A configuration in
    several files (a rerun) counts once: its last measurement, or its last skip if it was
    never measured -- so merge files of one machine only. A file that is missing or is not
    bench output is one line (:class:`~fusec.errors.FusecError`)."""
    import json
    from pathlib import Path

    from fusec.errors import FusecError

    results, docs = [], []
    for p in map(Path, paths):
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise FusecError(f"{p}: cannot read it as JSON ({e.__class__.__name__}: {e})") from None
        if not isinstance(doc, dict) or "fusec_bench" not in doc or not isinstance(doc.get("results"), list):
            raise FusecError(f"{p} is not the output of fusec bench (no 'fusec_bench' format and 'results' list)")
        docs.append(doc)
        results += [_backfilled(r, doc) for r in doc["results"]]
    last: dict[tuple, dict] = {}       # one configuration: its name and its connections

    def key(r: dict) -> tuple:
        return r.get("config", {}).get("name"), r.get("config", {}).get("stripes")

    for r in results:
        if "online" in r or "online" not in last.get(key(r), {}):
            last[key(r)] = r
    return [r for r in results if last.get(key(r)) is r], docs


def run_command(command: click.Command, argv: list[str] | None, prog: str) -> int:
    """Run a ``python -m fusec.bench.X`` click command: exit status 0, or 2 with one line for a
    user error (a file that is not bench output, a bad option), never a traceback."""
    from fusec.errors import FusecError

    try:
        command.main(args=argv, prog_name=prog, standalone_mode=False)
    except FusecError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    except click.ClickException as e:
        e.show()
        return 2
    return 0
