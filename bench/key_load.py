"""Key-load micro-benchmark: hello, claim (read + checksum + ledger mark) and stage of one
key set, timed apart, in GB/s (issue 11: key load >= 5 GB/s).

Writes a key file with the real writer (runtime/keyio.KeyFileWriter, random bytes in a
synthetic layout of 64-bit fields, so the checksums are the real ones), then per repeat
claims its one set through ``KeyFile.claim`` exactly as ``runtime/party.run_party`` does
(into the backend's ``host_buffer``: page-locked on a GPU) and stages it with the
backend's ``stage_set``. Every repeat uses a fresh state directory, so the same set may be
claimed again (the ledger's fsyncs are still paid). The first claim is a warm-up (it also
allocates the page-locked buffer); the figures are the median of the repeats after it.

    python bench/key_load.py --gb 4 --repeat 3                # one party, a peer thread answers the hello
    python bench/key_load.py --gb 4 --repeat 3 --parties 2    # both parties in two processes at once, over TCP
    python bench/key_load.py --gb 1 --repeat 3 --verify-first # fusec run's path: verify_set before the hello

The file is written once into --dir (default: a temporary directory, removed at the end)
and read warm from the page cache, as the bench reads its key files.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from fusec.errors import KeyFileError
from fusec.runtime import keyfile as fmt, keyio
from fusec.runtime.backend import get_backend
from fusec.runtime.channel import TcpChannel, TcpListener, local_channel_pair
from fusec.runtime.hello import pair
from fusec.runtime.keyio import KeyFile, KeyFileWriter
from fusec.runtime.layout import KeyLayout

SLOT_BYTES = 256 << 20      # one synthetic gate slot: a 64-bit field of 32 Mi values


def synthetic_layout(nbytes: int) -> KeyLayout:
    """Slots of one 64-bit field each, ``nbytes`` in all (rounded to 8 bytes)."""
    words, slots, i = max(1, nbytes // 8), [], 0
    while words > 0:
        n = min(words, SLOT_BYTES // 8)
        slots.append((f"g{i}", "bench", n, [("k", (n,), 64)]))
        words -= n
        i += 1
    return KeyLayout(slots)


def write_files(directory: Path, layout: KeyLayout, parties: int) -> list[Path]:
    """One key set per party's file: random bytes (one random slot's bytes, in every slot)."""
    ksid, secret = fmt.new_key_set_id(), fmt.new_pairing_secret()
    block = np.frombuffer(np.random.default_rng().bytes(SLOT_BYTES), np.uint8)
    paths = []
    for party in range(parties):
        path = directory / f"p{party}.key"
        with KeyFileWriter(path, layout, party, ksid, 1, durable=False, pairing_secret=secret) as w:
            w.begin_set(0)
            for s in layout.slots:
                w.write_gate_packed(s.gate_id, block[:s.nbytes])
            w.end_set()
        paths.append(path)
    return paths


def existing_files(directory: Path, layout: KeyLayout, parties: int) -> list[Path] | None:
    """The files a previous run left in ``directory`` for this layout (same bytes, warm), or None."""
    paths = [directory / f"p{party}.key" for party in range(parties)]
    heads = []
    try:
        for p in paths:
            with open(p, "rb") as f:
                heads.append(fmt.parse_header(f, p))
    except (OSError, KeyFileError):
        return None
    return paths if all(h.layout_digest == layout.digest_bytes() for h in heads) else None


def _peer_hello(path: Path, layout: KeyLayout, channel, rounds: int) -> None:
    """Party 1's side of ``rounds`` hellos (in a thread), from party 0's header."""
    with open(path, "rb") as f:
        h = fmt.parse_header(f, path)
    for _ in range(rounds):
        pair(channel, 1, layout.digest(), h.key_set_id, h.pairing_secret, 0, h.count)


def load_once(kf: KeyFile, layout: KeyLayout, party: int, channel, be, verify_first: bool) -> dict:
    """One key load as runtime/party.py times it; seconds per phase."""
    t = {}
    kf.inflate = not be.seeded_shares_on_device     # as runtime/party.py's open_keys reads for this backend
    t0 = time.perf_counter()
    if verify_first:            # fusec run: the set is verified before the hello (outside key load)
        kf.verify_set(0, be.host_buffer)
    t1 = time.perf_counter()
    idx = pair(channel, party, layout.digest(), kf.key_set_id, kf.pairing_secret, 0, kf.count)
    t2 = time.perf_counter()
    mark, marked = kf.ledger.mark, []

    def timed_mark(*args, **kw):
        m0 = time.perf_counter()
        try:
            return mark(*args, **kw)
        finally:
            marked.append(time.perf_counter() - m0)

    kf.ledger.mark = timed_mark
    reader = kf.claim(idx, be.host_buffer)
    t3 = time.perf_counter()
    be.stage_set(layout, reader.read_all_raw(), seeded_party=reader.seeded_party)
    be.synchronize()
    t4 = time.perf_counter()
    reader.finish()
    t.update(verify=t1 - t0, hello=t2 - t1, claim=t3 - t2, mark=sum(marked), stage=t4 - t3, total=t4 - t1)
    return t


def run_party(party: int, path: Path, layout_json: str, repeat: int, backend: str, verify_first: bool,
              port: int | None, threads: int | None = None, results=None) -> list[dict]:
    """Warm-up + ``repeat`` loads of ``path``'s set; ``port``: the peer process (party 0 listens)."""
    if threads:
        os.environ[keyio.IO_THREADS_ENV] = str(threads)     # read when keyio's pool first starts
    layout = KeyLayout.from_json(layout_json)
    be = get_backend(backend)
    peer = None
    if port is None:
        channel, other = local_channel_pair(timeout=600)
        peer = threading.Thread(target=_peer_hello, args=(path, layout, other, repeat + 1), daemon=True)
        peer.start()
    elif party == 0:
        with TcpListener("127.0.0.1", port) as lst:
            channel = lst.accept(600)
    else:
        channel = TcpChannel.connect("127.0.0.1", port, timeout=600, retry_for=60)
    runs = []
    with tempfile.TemporaryDirectory(prefix="fusec-keyload-state-", dir=path.parent) as states:
        for r in range(repeat + 1):
            with KeyFile.open(path, layout, party, Path(states) / str(r)) as kf:
                runs.append(load_once(kf, layout, party, channel, be, verify_first))
    channel.close()
    if results is not None:
        results.put((party, runs))
    return runs


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PHASES = {"verify": " verify_set before the hello, outside key load",
          "claim": " read + checksum + ledger mark",
          "mark": " the ledger's mark (inside claim: O_EXCL file, fsyncs)",
          "stage": " to the backend (GPU: one copy + unpack)",
          "total": " key load = hello + claim + stage"}


def report(party: int, runs: list[dict], nbytes: int, verify_first: bool) -> None:
    warm, rest = runs[0], runs[1:] or runs[:1]
    gb = nbytes / 1e9
    phases = (["verify"] if verify_first else []) + ["hello", "claim", "mark", "stage", "total"]
    for ph in phases:
        vals = [r[ph] for r in rest]
        med = statistics.median(vals)
        rate = f"{gb / med:6.2f} GB/s" if ph not in ("hello", "mark") and med > 0 else " " * 11
        what = PHASES.get(ph, "")
        print(f"p{party} {ph:6s} {med * 1e3:9.1f} ms  {rate}  (median of {len(vals)}: "
              f"{', '.join(f'{v * 1e3:.0f}' for v in vals)} ms; warm-up {warm[ph] * 1e3:.0f} ms){what}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=1.0, help="bytes of the key set, in GB (1e9)")
    ap.add_argument("--repeat", type=int, default=3, help="timed loads after one warm-up")
    ap.add_argument("--parties", type=int, choices=(1, 2), default=1,
                    help="2: both parties load at once in two processes (as on one bench host)")
    ap.add_argument("--backend", choices=("auto", "cpu", "gpu"), default="auto")
    ap.add_argument("--verify-first", action="store_true",
                    help="verify the set before the hello (fusec run's open_keys); claim then only marks")
    ap.add_argument("--dir", help="where to write the key files, kept and reused by later runs of the same "
                                  "size (same bytes, warm); default a temporary directory")
    ap.add_argument("--threads", type=int, help="I/O and hashing threads per party ($FUSEC_IO_THREADS; default the CPU count up to 16)")
    ap.add_argument("--json", help="also write the timings here")
    a = ap.parse_args(argv)
    backend = a.backend
    if backend == "auto":
        backend = "gpu" if importlib.util.find_spec("cupy") else "cpu"
    layout = synthetic_layout(int(a.gb * 1e9))
    nbytes = layout.set_nbytes
    tmp = None
    if a.dir:
        directory = Path(a.dir)
        directory.mkdir(parents=True, exist_ok=True)
    else:
        directory = Path(tmp := tempfile.mkdtemp(prefix="fusec-keyload-"))
    try:
        t0 = time.perf_counter()
        paths = existing_files(directory, layout, a.parties) if a.dir else None
        if paths is None:
            paths = write_files(directory, layout, a.parties)
            dt = time.perf_counter() - t0
            print(f"wrote {a.parties} key file(s) of one {nbytes / 1e9:.2f} GB set in {dt:.1f} s "
                  f"({a.parties * nbytes / 1e9 / dt:.2f} GB/s)")
        print(f"{a.parties} key file(s) of one {nbytes / 1e9:.2f} GB set in {directory}; backend {backend}, "
              f"{os.cpu_count()} CPUs, key-file format {fmt.FORMAT_VERSION}")
        lj = layout.to_json()
        if a.parties == 1:
            results = {0: run_party(0, paths[0], lj, a.repeat, backend, a.verify_first, None, a.threads)}
        else:
            ctx, port = mp.get_context("spawn"), _free_port()
            q = ctx.Queue()
            procs = [ctx.Process(target=run_party, args=(p, paths[p], lj, a.repeat, backend, a.verify_first,
                                                         port, a.threads, q)) for p in (0, 1)]
            for p in procs:
                p.start()
            results = dict(q.get(timeout=3600) for _ in procs)
            for p in procs:
                p.join()
        for party in sorted(results):
            report(party, results[party], nbytes, a.verify_first)
        if a.json:
            Path(a.json).write_text(json.dumps({"set_bytes": nbytes, "backend": backend, "cpus": os.cpu_count(),
                                                "runs": {str(k): v for k, v in results.items()}}, indent=1))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
