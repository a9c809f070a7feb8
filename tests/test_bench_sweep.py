"""``python -m fusec.bench.sweep``: the sweep tables joined from several bench files. The records
are made up here, so every ratio and verdict the tables show is checked against a value
computed in this file, not read back from the module."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fusec.bench import sweep


def record(seq: int, batch: int, gates: str, online: float, key_per_inf: float, bytes_per_inf: float,
           rounds: int, skipped: str | None = None) -> dict:
    c = {"name": f"bert-base/seq{seq}/b{batch}/{gates}/1gpu/plans", "model": "bert-base", "label": "bert-base",
         "seq": seq, "batch": batch, "gates": gates, "padded": True, "gpus": 1, "backend": "gpu", "net": None,
         "runtime": "launch plans", "lanes": 1, "compile_args": [], "stripes": 4}
    if skipped:
        return {"config": c, "skipped": skipped, "skip_kind": "memory",
                "compile": {"rounds_planned": rounds, "key_bytes_per_set": key_per_inf * batch}}
    return {"config": c, "compile": {"aes_per_set": int(4.4e8 * batch)},
            "keygen": {"per_inference": {"seconds": 1.0, "key_bytes_per_party": key_per_inf}},
            "online": {"per_batch": {"online_seconds": online, "bytes_sent": bytes_per_inf * batch, "rounds": rounds},
                       "per_inference": {"online_seconds": online / batch, "bytes_sent": bytes_per_inf},
                       "tokens_per_second": batch * seq / online, "steps": [],
                       "round_phases_per_batch": {"p0": {"step": 0.5 * online, "wire": 0.4 * online},
                                                  "p1": {"step": 0.4 * online, "pack": 0.2 * online,
                                                         "wire": 0.3 * online}}}}


def write(path: Path, card: str, results: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fusec_bench": 1, "date": "2026-12-07T00:00:00+00:00", "command": "synthetic",
                                "machine": {"gpus": [f"NVIDIA {card}, 81559 MiB"]}, "settings": {},
                                "results": results}))
    return path


@pytest.fixture
def files(tmp_path):
    h100a = write(tmp_path / "call1" / "a.json", "H100 80GB HBM3", [
        record(128, 1, "fused", 0.25, 3.0e9, 3.5e8, 390), record(128, 8, "fused", 1.0, 2.6e9, 3.5e8, 474),
        record(128, 1, "sigma", 1.20, 16.9e9, 9.7e8, 1315)])
    h100b = write(tmp_path / "call2" / "b.json", "H100 80GB HBM3", [
        record(128, 2, "fused", 0.40, 3.0e9, 3.51e8, 390), record(512, 1, "fused", 1.10, 25e9, 2.86e9, 522),
        record(128, 2, "sigma", 2.0, 16.9e9, 9.7e8, 1315, skipped="P1 killed (out of memory)")])
    h200 = write(tmp_path / "call3" / "c.json", "H200", [record(128, 1, "fused", 0.20, 3.0e9, 3.5e8, 390)])
    return [h100a, h100b, h200]


def _row(text: str, *cells: str) -> list[str]:
    """The table row whose leading cells are ``cells`` (split into its cells)."""
    for line in text.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if parts[:len(cells)] == list(cells):
            return parts
    raise AssertionError(f"no row {cells} in\n{text}")


def test_batch_rows_compare_with_batch_one_and_sigma_on_the_same_card_only(files):
    text = sweep.render(sweep.load_rows(files))
    batch = text.split("### Sequence sweep")[0]
    b8 = _row(batch, "bert-base", "128", "8", "fused", "launch plans", "H100 80GB HBM3", "call1")
    assert b8[10] == f"{(8 * 128 / 1.0) / (128 / 0.25):.2f}x"     # tokens/s against the H100's batch 1
    b2 = _row(batch, "bert-base", "128", "2", "fused", "launch plans", "H100 80GB HBM3", "call2")
    assert b2[10] == f"{(2 * 128 / 0.40) / (128 / 0.25):.2f}x"
    b1 = _row(batch, "bert-base", "128", "1", "fused", "launch plans", "H100 80GB HBM3", "call1")
    assert b1[10] == "1" and b1[11] == f"{1.20 / 0.25:.2f}x"      # sigma / fused, same card
    # both parties' AES on the one card over the slower party's time outside the wire (p1: step + pack)
    assert b8[16] == f"{2 * 4.4e8 * 8 / (0.6 * 1.0) / 1e9:.1f} G"
    assert "H200" not in batch           # the H200 ran one batch size only: no batch sweep of its own
    skipped = _row(batch, "bert-base", "128", "2", "sigma", "launch plans", "H100 80GB HBM3", "call2")
    assert skipped[7] == "skipped (memory)" and skipped[13] == "1315" and skipped[15] == "16.90 GB"


def test_the_sequence_sweep_is_at_the_smallest_batch_and_its_ratio_against_the_shortest_sequence(files):
    seq = sweep.render(sweep.load_rows(files)).split("### Sequence sweep")[1].split("###")[0]
    s512 = _row(seq, "bert-base", "512", "1", "fused")
    assert s512[10] == f"{(512 / 1.10) / (128 / 0.25):.2f}x"
    h200 = _row(seq, "bert-base", "128", "1", "fused", "launch plans", "H200")
    assert h200[10] == "-"               # nothing to compare with on that card
    assert not any(line.startswith("| bert-base | 128 | 8 ") for line in seq.splitlines())


def test_per_inference_key_that_moves_with_the_rounds_is_named_with_them(files):
    text = sweep.render(sweep.load_rows(files)).split("### Key and bytes per inference")[1]
    h100 = next(line for line in text.splitlines() if "H100" in line and "seq 128 fused" in line)
    assert f"key {(2.6e9 / 3.0e9 - 1) * 100:+.1f}% at batch 8 (474 rounds against 390)" in h100
    assert "batch 2" not in h100         # 3.0 GB and 351 MB against 350 MB: within 1%
    assert "passes/pricing.py" in h100


def test_constant_per_inference_costs_are_said_to_be_so(tmp_path):
    f = write(tmp_path / "x" / "a.json", "H100 80GB HBM3", [
        record(128, 1, "fused", 0.25, 3.0e9, 3.5e8, 390), record(128, 4, "fused", 0.7, 3.01e9, 3.52e8, 390)])
    lines = sweep.constancy(sweep.load_rows([f]))
    assert lines == ["- bert-base seq 128 fused (launch plans) on the H100 80GB HBM3: key and bytes per inference "
                     "within 1% across batches 1, 4."]


def test_a_file_that_is_not_bench_output_is_one_line_and_status_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    p = subprocess.run([sys.executable, "-m", "fusec.bench.sweep", str(bad)], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "not the output of fusec bench" in p.stderr
