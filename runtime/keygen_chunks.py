"""A large elementwise gate's keys made in element chunks, so the dealer's device memory is a chunk's.

Why: the dealer makes a set gate by gate, and a gate's keygen holds every field of both
parties' keys as uint64 at once, with its temporaries. On a card the parties share, that was
the one allocation too many: GPT-2's GELU at batch 8 (3.1 M elements) had the dealer at
5.29 GB when it asked for 0.55 GB more (H100, 2026-12-07). A gate whose keys are elementwise
(:attr:`~fusec.runtime.gates.base.Gate.elementwise_keys`) is keyed instead ``chunk`` elements at
a time by the gate :meth:`~fusec.runtime.gates.base.Gate.with_elements` gives, each chunk's
keys leaving the device at once (after the dealer's ``finish``, its seeded split of the chunk:
runtime/dealer.py); they are joined on the host along each field's element axis,
where the dealer packs them anyway. The masks stay where the dealer computes (the next gates
read them).

The chunk is one constant on every backend, so a test seed still gives the same files from
the CPU and the GPU dealer; the keys of a chunked gate are other draws than one keygen of the
whole gate would take, from the same CSPRNG, as every set's are.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy

from fusec.errors import FusecError
from fusec.runtime import xp
from fusec.runtime.gates.base import Gate, Key
from fusec.runtime.rng import DealerRng
from fusec.runtime.xp import np

#: Elements keyed at a time (a multiple of 128: a chunk's share fields then start on a block
#: of the seeded shares' stream, runtime/seeded_shares.py), about one wave of an H100's threads.
#: BERT-base's GELU is 393,216 elements at batch 1 (two chunks) and 3.1 M at batch 8 (twelve).
#: On the CPU, GELU's keys at 3.1 M elements take 893 MB of working memory beside the 6.6 GB
#: they return (830 MB keyed whole; 1,787 MB at 2^19; bench/dealer_chunks.py); on a card the
#: returned keys are on the host, so the device holds the working memory alone.
KEYGEN_CHUNK_ELEMENTS = 1 << 18


def element_axes(gate: Gate) -> dict[str, int] | None:
    """``{field: its element axis}`` of an elementwise gate, found by comparing the field shapes
    of its one- and two-element gates (the one axis where 1 becomes 2); None where a field has
    no such axis (e.g. a count shared by all elements): the gate is then keyed in one piece."""
    if not gate.elementwise_keys:
        return None
    one, two = gate.with_elements(1).fields(), gate.with_elements(2).fields()
    axes: dict[str, int] = {}
    for (name, s1, _), (name2, s2, _) in zip(one, two, strict=True):
        diff = [i for i, (a, b) in enumerate(zip(s1, s2)) if a != b]
        if name != name2 or len(s1) != len(s2) or len(diff) != 1 or (s1[diff[0]], s2[diff[0]]) != (1, 2):
            return None
        axes[name] = diff[0]
    return axes


#: What the dealer does to a gate's keys where it computes, before they leave: called with the
#: first element of the keys' part (0 for a gate keyed whole) and both parties' keys of it
#: (runtime/dealer.py splits the seeded shares so, a chunk at a time).
Finish = Callable[[int, Key, Key], tuple[Key, Key]]


def chunked(gate: Gate, chunk: int | None = None) -> bool:
    """Whether :func:`gate_keygen` keys ``gate`` in chunks (with inputs of its element count)."""
    chunk = KEYGEN_CHUNK_ELEMENTS if chunk is None else int(chunk)
    return bool(chunk) and gate.elements > chunk and element_axes(gate) is not None


def gate_keygen(gate: Gate, rng: DealerRng, in_masks: list, chunk: int | None = None,
                finish: Finish | None = None) -> tuple[object, Key, Key]:
    """``gate.keygen(rng, in_masks)``, in element chunks where the gate is larger than ``chunk``
    (default :data:`KEYGEN_CHUNK_ELEMENTS`; 0: never) and its keys are elementwise; ``finish``
    (if given) applied to each part's keys. Chunked, the keys are host (numpy) arrays of the
    whole gate's field shapes (a field the finish adds with no element axis, such as a seed,
    taken from the first chunk) and the output mask is one flat array of the backend's."""
    chunk = KEYGEN_CHUNK_ELEMENTS if chunk is None else int(chunk)
    N = gate.elements
    flat = [m.reshape(-1) for m in in_masks]
    axes = element_axes(gate) if chunked(gate, chunk) and all(m.size == N for m in flat) else None
    if axes is None:
        out, k0, k1 = gate.keygen(rng, in_masks)
        return (out, *finish(0, k0, k1)) if finish is not None else (out, k0, k1)
    if chunk % 128:
        raise ValueError(f"keygen chunk {chunk} is not a multiple of 128 elements")
    outs: list = []
    keys: tuple[Key, Key] = ({}, {})
    host = getattr(xp.current(), "asnumpy", numpy.asarray)      # cupy.asnumpy on a device
    for lo in range(0, N, chunk):
        sub = gate.with_elements(min(N, lo + chunk) - lo)
        out, k0, k1 = sub.keygen(rng, [m[lo:lo + sub.elements] for m in flat])
        if out.size != sub.elements:
            raise FusecError(f"dealer bug: {gate.kind}'s chunk of {sub.elements} elements has an output mask "
                             f"of {out.size}")
        outs.append(out.reshape(-1))
        if finish is not None:
            k0, k1 = finish(lo, k0, k1)
        shapes = {name: shape for name, shape, _ in sub.fields()}
        for whole, part in zip(keys, (k0, k1)):
            for name, v in part.items():
                if name not in axes:         # no element axis (a seed the finish drew for the gate)
                    whole.setdefault(name, host(v))
                    continue
                v, ax = host(v).reshape(shapes[name]), axes[name]
                if name not in whole:        # the whole gate's field, filled chunk by chunk
                    whole[name] = numpy.empty(v.shape[:ax] + (N,) + v.shape[ax + 1:], v.dtype)
                whole[name][(slice(None),) * ax + (slice(lo, lo + sub.elements),)] = v
        del out, k0, k1
    return np.concatenate(outs), keys[0], keys[1]
