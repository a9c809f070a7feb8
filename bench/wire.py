"""Loopback exchange throughput of the parties' TCP channel: two processes, each sending a
frame of SIZE bytes while receiving the peer's, ROUNDS times (what a batched round does).

    python bench/wire.py --mb 256 --rounds 8 --stripes 1,2,4,8

Prints GB/s per direction per party: the loopback rate that bounds a batched round's wire
time when both parties share one host (user -> kernel copies at the sender, kernel -> user
at the receiver).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import numpy as np


def _party(role: int, port: int, size: int, rounds: int, q, stripes: int = 1) -> None:
    from fusec.runtime import striped_channel
    from fusec.runtime.channel import TcpListener

    if role == 0:
        with TcpListener("127.0.0.1", port) as lst:
            q.put(lst.port)
            ch = striped_channel.accept(lst, 60.0)
    else:
        ch = striped_channel.connect("127.0.0.1", port, stripes, timeout=60.0)
    out = np.full(size, role + 1, np.uint8)
    into = np.empty(size, np.uint8)
    ch.exchange(b"x")
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        got = ch.exchange(out, into=into)
        times.append(time.perf_counter() - t0)
        assert len(got) == size and into[0] == 2 - role
    ch.close()
    if role == 0:
        q.put(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=256.0)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--stripes", default="1", help="TCP connections per channel, comma-separated (runtime/striped_channel.py)")
    a = ap.parse_args()
    size = int(a.mb * (1 << 20))
    ctx = mp.get_context("spawn")
    for stripes in (int(s) for s in a.stripes.split(",")):
        q = ctx.Queue()
        p0 = ctx.Process(target=_party, args=(0, 0, size, a.rounds, q))
        p0.start()
        port = q.get(timeout=60)
        p1 = ctx.Process(target=_party, args=(1, port, size, a.rounds, q, stripes))
        p1.start()
        times = q.get(timeout=600)
        p0.join(); p1.join()
        med = statistics.median(times)
        print(f"stripes {stripes}: exchange of {size / 1e6:.0f} MB each way: median {med * 1e3:.1f} ms = "
              f"{size / med / 1e9:.2f} GB/s per direction per party (rounds {', '.join(f'{t * 1e3:.0f}' for t in times)} ms)")


if __name__ == "__main__":
    main()
