"""Several inferences in one ``fusec run``: the request files, the count both servers agree on,
and where each inference's outputs go.

A server that stays up for several requests keeps its connection and its backend: the
GPU's compiled kernels and, with ``--cuda-graphs``, its launch plan (the second inference
is recorded, every later one replayed; runtime/launch_plan.py). Each inference still
claims a key set of its own, and both servers must run the same number of inferences:
they say how many before anything else, so a mismatch is one clear line instead of a
server waiting for a key-set hello that never comes.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fusec.errors import FusecError, ParameterError
from fusec.runtime.backend import host_memory_bytes

SUFFIXES = (".npy", ".npz")


@dataclass(frozen=True)
class Request:
    """One inference: its name (for its output file) and this party's input file, if any."""

    name: str
    input_path: Path | None


def plan_requests(input_path: str | None, inputs_dir: str | None, count: int | None,
                  output_path: str | None, outputs_dir: str | None) -> list[Request]:
    """The inferences this server runs, from ``--input``/``--inputs DIR``/``--count`` (checked
    before the build loads or a key set is claimed)."""
    if input_path and inputs_dir:
        raise ParameterError("give --input (one request) or --inputs DIR (one request per file), not both")
    if output_path and outputs_dir:
        raise ParameterError("give --output (one request) or --outputs DIR (one file per request), not both")
    if inputs_dir:
        d = Path(inputs_dir)
        if not d.is_dir():
            raise ParameterError(f"--inputs {inputs_dir}: not a directory", "pass a directory of .npy/.npz files")
        files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise ParameterError(f"--inputs {inputs_dir}: no .npy or .npz file in it",
                                 "put one request per file there")
        if count is not None and count != len(files):
            raise ParameterError(f"--count {count} but --inputs {inputs_dir} holds {len(files)} request(s)",
                                 "drop --count: the directory sets it")
        requests = [Request(f.stem, f) for f in files]
    else:
        n = 1 if count is None else int(count)
        requests = [Request(f"inference_{i:04d}", Path(input_path) if input_path else None) for i in range(n)]
        if input_path and n > 1:
            raise ParameterError(f"--count {n} with one --input: each inference needs its own request",
                                 "put the requests in a directory and pass --inputs DIR")
    if output_path and len(requests) > 1:
        raise ParameterError(f"--output names one file, and this server runs {len(requests)} inferences",
                             "pass --outputs DIR (one .npz per request)")
    if outputs_dir:
        d = Path(outputs_dir)
        if not d.is_dir():
            raise ParameterError(f"--outputs {outputs_dir}: not a directory", "create it first")
        clash = [r.name for r in requests if (d / f"{r.name}.npz").exists()]
        if clash:
            raise ParameterError(f"--outputs {outputs_dir} already holds {clash[0]}.npz",
                                 "pick an empty directory: outputs are never overwritten")
    return requests


def output_file(outputs_dir: str, request: Request) -> Path:
    return Path(outputs_dir) / f"{request.name}.npz"


def agree_count(channel, n: int) -> None:
    """Both servers say how many inferences they run before the first key-set hello."""
    got = channel.exchange(json.dumps({"inferences": int(n)}).encode(), "hello", 256)
    try:
        theirs = json.loads(bytes(got))["inferences"]
    except (ValueError, KeyError, TypeError):
        raise FusecError("the peer did not say how many inferences it runs",
                         "both servers must run the same fusec version") from None
    if theirs != n:
        raise FusecError(f"this server runs {n} inference(s), the peer {theirs}",
                         "start both with the same number of requests (--inputs DIR on the input's owner, "
                         "--count N on the other)")


#: A set read ahead into a fresh array (not the backend's reused buffer) at most this share
#: of the host's memory.
SPARE_SET_SHARE = 1 / 8


class NextSetReader:
    """Reads and checks the next key set while the current inference runs, so a server that
    serves several requests pays the read and checksum of a multi-GB set (about 0.9 s of
    BERT-base's 1.1 s key load) outside the gap between two requests: the next claim then
    only marks the ledger. The set is read into the backend's host buffer, which is free once
    the current set is staged (``run_party``'s ``after_stage``); nothing is marked as used
    until the claim, and a set the peer does not agree on is simply read again then.
    Only for key files (a dealer's stream sends a set when both servers ask) and not with
    ``--stream-keys`` (its host buffer feeds the device during the online phase)."""

    def __init__(self, kf, host_buffer: Callable | None) -> None:
        self.kf, self.host_buffer = kf, host_buffer
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @classmethod
    def usable(cls, kf, stream_keys: bool) -> bool:
        return hasattr(kf, "verify_set") and not stream_keys

    def start(self) -> None:
        """After the current set is staged and marked: read the next unused one, if any, and
        if it goes into the reused host buffer or is small: the current set's bytes are still
        held, and a second copy of a set as large as BERT-base's at batch 8 (34 GB) per
        server would exhaust the host (the next claim then reads it, as without this)."""
        index = self.kf.next_unused()
        if index is None:
            return
        n = self.kf.set_nbytes
        reused = self.host_buffer is not None and self.host_buffer(n) is not None
        if not reused and n > SPARE_SET_SHARE * host_memory_bytes():
            return

        def read() -> None:
            try:
                self.kf.verify_set(index, self.host_buffer)
            except BaseException as e:  # noqa: BLE001 - raised again in wait(), on the main thread
                self._error = e
        self._thread = threading.Thread(target=read, name="fusec-next-key-set", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Before the next inference's hello: the read has finished (a corrupted set is the
        key file's usual error, here rather than at the claim)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err
