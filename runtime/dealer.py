"""The dealer: samples masks with a CSPRNG and writes one key file per server."""
from __future__ import annotations

import os
from pathlib import Path

from fusec.runtime.graph import GateGraph
from fusec.runtime.keyfile import KeyFileWriter, new_key_set_id
from fusec.runtime.rng import DealerRng


def write_keys(graph: GateGraph, out_dir: str | os.PathLike, count: int = 1,
               seed: bytes | None = None, progress=None) -> tuple[Path, Path]:
    """Generate ``count`` key sets (one per inference) into ``p0.key`` and ``p1.key``.

    ``seed`` is for reproducible tests only; without it the CSPRNG is seeded from the OS.
    Both files carry the same fresh key-set id, so servers can tell matching files apart.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layout = graph.layout()
    ksid = new_key_set_id()
    rng = DealerRng(seed)
    paths = (out / "p0.key", out / "p1.key")
    with KeyFileWriter(paths[0], layout, 0, ksid, count) as w0, KeyFileWriter(paths[1], layout, 1, ksid, count) as w1:
        for i in range(count):
            k0, k1, _ = graph.keygen(rng)
            w0.write_set(i, k0)
            w1.write_set(i, k1)
            if progress:
                progress(i + 1, count)
    return paths
