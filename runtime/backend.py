"""Backends: where the online phase's arithmetic runs.

Gates are written once against a :class:`Backend`: array arithmetic through ``be.xp``
(numpy or CuPy, which share the API the gates use) and the FSS evaluations through the
backend's methods. The CPU backend is the bit-exact reference; a GPU backend overrides
the FSS methods with CUDA kernels and ``xp`` with CuPy, and the gates do not change.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from types import ModuleType
from typing import Callable, Iterator

import numpy as np

from fusec.errors import FusecError
from fusec.runtime import dcf, dpf, dpf_arc, dpf_arith, dpf_trie, ring, xp as array_module
from fusec.runtime.layout import GateSlot, KeyField, KeyLayout, pack_field, pack_gate_array, unpack_gate_key
from fusec.runtime.prg import CpuPrg, active_prg
from fusec.runtime.rng import DealerRng
from fusec.runtime.round_message import MINE, PEER, RoundMessage
from fusec.runtime.seeded_shares import inflated


def host_memory_bytes() -> int:
    """This host's physical memory (0 where the OS does not say): the bound for buffers a
    party keeps beside a key set (page-locked reads, a set read ahead)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


Buffer = bytes | bytearray | memoryview | np.ndarray


class StagedKeys(Mapping):
    """One key set ready for the online phase, the same type on every backend: gate id ->
    that gate's key arrays (where the gates run). Either every gate's fields were unpacked
    when the set was staged (``ready``), or each gate's are unpacked on first use (``load``:
    a set too large to hold unpacked next to its packed bytes). ``shares_late``: ``load`` also
    writes seeded shares from their seeds (AES inside the online clock, runtime/device_inflate.py)."""

    def __init__(self, gate_ids, ready: dict | None = None, load: Callable[[str], dict] | None = None,
                 shares_late: bool = False) -> None:
        self._ids = list(gate_ids)
        self._ready = ready if ready is not None else {}
        self._load = load
        self.shares_late = bool(shares_late and load is not None)

    def __getitem__(self, gate_id: str) -> dict:
        hit = self._ready.get(gate_id)
        if hit is None:
            if self._load is None:
                raise KeyError(gate_id)
            hit = self._load(gate_id)
        return hit

    def __iter__(self):
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def unpacked_up_front(self) -> bool:
        """Whether every gate's fields were unpacked when the set was staged."""
        return self._load is None


class Backend:
    """Interface every backend implements (CPU reference shown here)."""

    name = "cpu"
    #: Whether :meth:`stage_set` takes sets in a party's stored layout and regenerates their
    #: seeded shares where it unpacks them (a GPU: runtime/device_inflate.py) rather than
    #: having the key file inflate them on the host first.
    seeded_shares_on_device = False
    xp: ModuleType = np

    def __init__(self) -> None:
        self.prg = CpuPrg()

    @contextlib.contextmanager
    def activate(self) -> Iterator["Backend"]:
        """Make this backend's arrays and PRG the ones gate/keygen code uses (fusec.runtime.xp)."""
        token = active_prg.set(self.prg)
        try:
            with array_module.using(self.xp):
                yield self
        finally:
            active_prg.reset(token)

    def dealer_rng(self, seed: bytes | None = None) -> DealerRng:
        """The dealer's CSPRNG, drawing into this backend's arrays (same stream for a seed)."""
        return DealerRng(seed)

    # -- data movement: keys and inputs arrive as numpy arrays from files/sockets
    def asarray(self, a: np.ndarray):
        return a

    def asnumpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def host_buffer(self, nbytes: int) -> np.ndarray | None:
        """Where a key set is read before :meth:`stage_set` (None: a fresh array per set;
        the CPU's staged keys may be views of it)."""
        return None

    def receive_buffer(self, nbytes: int) -> np.ndarray | None:
        """Where a round's peer bytes are received (reused round after round), or None: the
        channel returns a fresh buffer. The GPU's is page-locked, so the copy to the device
        is one DMA."""
        return None

    def stage_key(self, arrays: dict[str, np.ndarray]) -> dict:
        """Move one gate's key arrays to where ``eval`` runs (device memory on a GPU)."""
        return {k: self.asarray(v) for k, v in arrays.items()}

    def stage_set(self, layout: KeyLayout, buf: np.ndarray, stream: bool = False,
                  seeded_party: int | None = None) -> StagedKeys:
        """A whole key set (its bytes, as read from the file) -> every gate's key arrays.
        ``stream``: each gate's are unpacked when the gate first runs, inside the online
        clock (``buf`` must stay untouched until the run ends). ``seeded_party``: ``buf``
        lies in that party's stored layout (``KeySetReader.seeded_party``), inflated here."""
        if seeded_party is not None:
            buf = inflated(layout, seeded_party, buf)
        b = np.ascontiguousarray(buf).view(np.uint8).reshape(-1)
        slots = {s.gate_id: s for s in layout.slots}

        def load(gate_id: str) -> dict:
            s = slots[gate_id]
            return self.stage_key(unpack_gate_key(s, b[s.offset:s.offset + s.nbytes]))

        if stream:
            return StagedKeys(layout.gate_ids, load=load)
        return StagedKeys(layout.gate_ids, ready={g: load(g) for g in layout.gate_ids})

    def pack_open(self, share, bits: int):
        """One open's share, reduced and packed to ``bits`` bits per value (uint8)."""
        return self.asarray(ring.pack_bits(self.asnumpy(share) & ring.mask(bits), bits))

    def unpack_open(self, buf, bits: int, count: int):
        """``count`` peer values of ``bits`` bits from packed bytes (as this backend's array)."""
        return self.asarray(ring.unpack_bits(self.asnumpy(buf), bits, count))

    def pack_round(self, layout: RoundMessage, shares: list) -> Buffer:
        """Our message of one round: every open we send a share of, packed (the reference:
        open by open, concatenated)."""
        parts = [self.asnumpy(self.pack_open(sh, slot.bits)) for slot, sh in zip(layout.slots, shares)
                 if slot.mode != PEER]
        return np.concatenate(parts).tobytes() if len(parts) > 1 else (parts[0].tobytes() if parts else b"")

    def unpack_round(self, layout: RoundMessage, shares: list, peer: Buffer) -> list:
        """Every open's value from our shares and the peer's message (``layout.their_bytes`` long)."""
        theirs_all = self.asarray(np.frombuffer(peer, np.uint8)) if layout.their_bytes else None
        out = []
        for slot, share in zip(layout.slots, shares):
            m = ring.mask(slot.bits)
            if slot.mode == MINE:
                out.append(share & m)
                continue
            theirs = self.unpack_open(theirs_all[slot.theirs:slot.theirs + slot.nbytes], slot.bits,
                                      slot.count).reshape(slot.shape)
            out.append(theirs if slot.mode == PEER else (share + theirs) & m)
        return out

    def matmul(self, a, b):
        """Products over Z_{2^64} (uint64 wraps; callers reduce mod 2^n)."""
        return self.xp.matmul(a, b)

    def matmul_public(self, a, w_ring, w_signed):
        """``a @ W`` for a public integer matrix W given as ring elements (``w_ring``, uint64)
        and as small signed integers (``w_signed``, int64, equal mod 2^n): right mod 2^n,
        which is all callers keep. On the host, exact float64 BLAS products of limbs
        (:func:`ring.matmul_small`); an array module of another kind multiplies ``w_ring``."""
        if self.xp is np:
            return ring.matmul_small(a, w_signed)
        return self.matmul(a, w_ring)

    def pack_key(self, slot: GateSlot, arrays: dict) -> np.ndarray:
        """One gate's key as its slot bytes (host uint8), checked against the layout."""
        return pack_gate_array(slot, {k: self.asnumpy(v) for k, v in arrays.items()})

    def pack_key_field(self, slot: GateSlot, f: KeyField, values, out: np.ndarray | None = None) -> np.ndarray:
        """One field's values (or a part of them, shaped as ``f``) packed where the backend
        computes, as host bytes (``f.packed_nbytes``, into ``out`` if given): a gate keyed in
        chunks is packed so, chunk by chunk (runtime/keygen_chunks.py ``PackedParts``)."""
        packed = pack_field(slot, f, self.asnumpy(values))
        if out is None:
            return packed
        out[...] = packed
        return out

    def key_bytes(self, nbytes: int) -> np.ndarray:
        """Host bytes one gate's packed key is assembled in (page-locked on a GPU)."""
        return np.empty(int(nbytes), np.uint8)

    def pack_key_device(self, slot: GateSlot, arrays: dict):
        """The slot bytes where the backend computes (the dealer's in-memory timing: no copy
        to the host); on the CPU the same as :meth:`pack_key`."""
        return self.pack_key(slot, arrays)

    def synchronize(self) -> None:
        """Wait for queued device work (profiling); nothing to wait for on the CPU."""

    # -- launch plans: recorded and replayed on the GPU (runtime/launch_plan.py); the CPU interprets
    def launch_plan(self, graph, keys=None) -> None:
        """The plan to record or replay this evaluation of ``graph`` on ``keys`` with (never, here)."""
        return None

    def segment_start(self) -> None:
        """The work up to the next exchange begins (a recording starts capturing it)."""

    def segment_finish(self, send: int, expect: int, scope: str) -> None:
        """The work up to an exchange of ``send`` / ``expect`` bytes is queued (``expect`` < 0:
        the last work, no exchange); a recording captures and runs it here."""

    def input_array(self, x):
        """An input's encoded values as a flat uint64 array of this backend."""
        return self.asarray(np.asarray(x, np.uint64).reshape(-1))

    def release_keys(self) -> None:
        """The online phase is over: let go of what staging kept of the set (nothing here)."""

    def release_cache(self) -> int:
        """Give the device memory this process has cached but does not use back to the card;
        the bytes given back (0 on the CPU). The dealer calls it after each key set: both
        parties may share its card, and a GPU dealer's pool otherwise keeps the largest gate's
        keygen working set for the whole online phase."""
        return 0

    def memory_report(self) -> dict:
        """Device memory as this process sees it, for the bench's step records (empty on the CPU)."""
        return {}

    # -- FSS evaluations
    def dcf_eval(self, party: int, key: dcf.DcfKey, x):
        return dcf.eval(party, key, x, self.prg)

    def dpf_lt_eval(self, party: int, key: dpf.DpfKey, x):
        return dpf.lt_eval(party, key, x, self.prg)

    def dpf_lt_arc(self, party: int, key: dpf.DpfKey, u, arc: dpf_arc.DpfArc):
        """``dpf_lt_eval`` at ``u - a_j`` for the arc's offsets, its shared tree prefixes expanded once."""
        return dpf_arc.lt_eval_arc(party, key, u, arc, self.prg)

    def dpf_lt_trie(self, party: int, key: dpf.DpfKey, u, trie: dpf_trie.DpfTrie):
        """``dpf_lt_eval`` at ``u - a_j`` for many spread-out offsets, each node of their paths once."""
        return dpf_trie.lt_eval_trie(party, key, u, trie, self.prg)

    def dpf_eval(self, party: int, key: dpf.DpfKey, x):
        return dpf.eval(party, key, x, self.prg)

    def dpf_eval_full(self, party: int, key: dpf.DpfKey):
        return dpf.eval_full(party, key, self.prg)

    def dpf_arith_eval_full(self, party: int, key: dpf_arith.DpfArithKey):
        return dpf_arith.eval_full(party, key, self.prg)

    @property
    def aes_calls(self) -> int:
        """AES blocks this backend has encrypted so far (checks the cost model)."""
        return self.prg.aes_calls


def get_backend(name: str = "cpu", kernels_source: str | None = None) -> Backend:
    """The backend called ``name`` ('cpu' or 'gpu'), with a clear error if unavailable.

    ``kernels_source``: a build's generated kernels.cu, for the GPU backend.
    """
    if name == "cpu":
        return Backend()
    if name == "gpu":
        try:
            from fusec.runtime.gpu_backend import GpuBackend  # type: ignore
        except ImportError as e:  # CuPy missing or no GPU backend built
            raise FusecError(f"the GPU backend is not available here ({e})",
                             "install fusec[gpu-cuda12] or fusec[gpu-cuda13] on a machine with an NVIDIA GPU, "
                             "or run with --backend cpu") from None
        return GpuBackend(kernels_source)
    raise FusecError(f"unknown backend {name!r}", "choose 'cpu' or 'gpu'")
