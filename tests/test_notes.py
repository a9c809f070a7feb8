"""Compile notes folded per message (fusec/notes.py): nothing lost, nothing merged that differs."""
from __future__ import annotations

from fusec.notes import grouped


def _note(name: str, msg: str, op: str = "Scalar") -> str:
    return f"{op} node '{name}': {msg}"


def test_a_message_repeated_per_layer_is_one_line_naming_every_layer():
    msg = "rsqrt held at 1774 below 0.0002441 (one input ulp)"
    names = [f"/enc/layer.{i}/ln/scalar" for i in (0, 1, 2, 5, 7, 8)]
    out = grouped([_note(n, msg) for n in names])
    assert out == [f"6 Scalar nodes '/enc/layer.*/ln/scalar' (* = 0-2, 5, 7-8): {msg}"]


def test_different_messages_and_ops_stay_apart_in_first_seen_order():
    notes = [_note("/l.0/a", "fit 42944.1 ulps"), "calibration used 3 of 4 requests",
             _note("/l.1/a", "fit 44392.2 ulps"), _note("/l.2/a", "fit 42944.1 ulps"),
             _note("/l.3/a", "fit 42944.1 ulps", op="Softmax")]
    assert grouped(notes) == ["2 Scalar nodes '/l.*/a' (* = 0, 2): fit 42944.1 ulps",
                              "calibration used 3 of 4 requests",
                              "Scalar node '/l.1/a': fit 44392.2 ulps",
                              "Softmax node '/l.3/a': fit 42944.1 ulps"]


def test_names_that_differ_in_more_than_one_number_or_in_text_are_listed_as_they_are():
    msg = "no proven bound"
    names = ["/emb/ln", "/enc/layer.0/ln", "/enc/layer.1/ln", "/h.0/x.1", "/h.1/x.2"]
    out = grouped([_note(n, msg) for n in names])
    assert out == ["5 Scalar nodes '/emb/ln', '/enc/layer.*/ln' (* = 0-1), '/h.0/x.1', '/h.1/x.2': no proven bound"]


def test_every_node_of_a_real_build_is_counted_once():
    """Counts and names read back from the folded lines add up to the notes given."""
    import re

    notes = [_note(f"/m/layer.{i}/{part}", f"message {part}") for i in range(12) for part in ("a", "b")]
    notes += [_note("/m/head", "message a"), "a note about no node"]
    out = grouped(notes)
    counted = 0
    for line in out:
        m = re.match(r"^(\d+) Scalar nodes ", line)
        counted += int(m[1]) if m else int(line.startswith("Scalar node "))
    assert counted == len(notes) - 1 and "a note about no node" in out and len(out) == 3
