"""Compile notes for people: one line per message, not one per layer.

The passes note what a reader of the build should know (a fit over its error bound, a
function held past a breakpoint, ...) once per node, so a 12-layer model repeats each message
12 or 24 times and the one different message drowns. :func:`grouped` folds the notes that
say the same thing about different nodes into one line naming the nodes by a pattern
(``'/bert/encoder/layer.*/output/LayerNorm/scalar' (* = 0-11)``) and their count. The build
keeps every note as it was (``ir.json``, ``fusec inspect --json``); only the text that
``fusec compile`` and the report print is folded.
"""
from __future__ import annotations

import re

#: a note about one node: ``f"{node!r}: message"``, ``repr`` being ``"{op} node '{name}'"``
_NODE_NOTE = re.compile(r"^(?P<op>\w+) node '(?P<name>[^']*)': (?P<msg>.+)$", re.S)
_DIGITS = re.compile(r"(\d+)")


def _runs(values: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    out, vs = [], sorted(set(values))
    start = prev = vs[0]
    for v in vs[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(out)


def _patterns(names: list[str]) -> list[str]:
    """Names that differ in one number only, as one pattern with ``*`` and its values; the
    others as they are. In first-seen order."""
    groups: dict[tuple, list[list[str]]] = {}
    for name in names:
        parts = _DIGITS.split(name)     # text, number, text, number, ..., text
        groups.setdefault((len(parts), tuple(parts[0::2])), []).append(parts)
    out = []
    for members in groups.values():
        varying = [i for i in range(1, len(members[0]), 2) if len({m[i] for m in members}) > 1]
        if len(members) == 1 or len(varying) != 1:
            out += ["'" + "".join(m) + "'" for m in members]
            continue
        i = varying[0]
        pattern = "".join("*" if j == i else p for j, p in enumerate(members[0]))
        out.append(f"'{pattern}' (* = {_runs([int(m[i]) for m in members])})")
    return out


def grouped(notes: list[str]) -> list[str]:
    """The notes with those that differ only in their node folded into one line each, at the
    place of the first; notes about no node stay as they are."""
    order: list[tuple] = []
    nodes: dict[tuple, list[str]] = {}
    for note in notes:
        m = _NODE_NOTE.match(note)
        key = (m["op"], m["msg"]) if m else (None, note)
        if key not in nodes:
            order.append(key)
            nodes[key] = []
        if m:
            nodes[key].append(m["name"])
    out = []
    for op, msg in order:
        names = nodes[(op, msg)]
        if op is None:
            out.append(msg)
        elif len(names) == 1:
            out.append(f"{op} node '{names[0]}': {msg}")
        else:
            out.append(f"{len(names)} {op} nodes {', '.join(_patterns(names))}: {msg}")
    return out


__all__ = ["grouped"]
