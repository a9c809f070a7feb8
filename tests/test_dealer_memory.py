"""The dealer keeps only the masks of wires a later gate still reads (runtime/graph.py
``keygen_stream``): a set of BERT-base at batch 4 would otherwise hold every activation's
mask on the device until the set is done."""
import gc
import weakref

import numpy as np

from fusec.runtime.gates.arith import Mul
from fusec.runtime.graph import GateGraph
from fusec.runtime.rng import DealerRng


def _chain() -> GateGraph:
    g = GateGraph()
    g.input("x", 4, 16)
    g.add("a", Mul(4, 16), ["x", "x"])
    g.add("b", Mul(4, 16), ["a", "x"])      # x's last reader
    g.add("c", Mul(4, 16), ["b", "b"])
    g.output("y", "c")
    return g


def test_each_mask_is_dropped_after_its_last_reader():
    g = _chain()
    alive: dict[str, weakref.ref] = {}
    for n in g.nodes:           # record a weak reference to every mask the dealer draws
        def keygen(rng, masks, _orig=n.gate.keygen, _id=n.id):
            out, k0, k1 = _orig(rng, masks)
            alive[_id] = weakref.ref(out)
            return out, k0, k1
        n.gate.keygen = keygen
    live_after = {}
    for node_id, _, _ in g.keygen_stream(DealerRng(b"memory")):
        gc.collect()
        live_after[node_id] = {w for w, ref in alive.items() if ref() is not None}
    assert live_after["a"] == {"x", "a"}
    assert live_after["b"] == {"b"}             # x and a read for the last time by b
    assert live_after["c"] == {"c"}
    assert live_after["y"] <= {"y"}             # the output's mask lives on in its key only


def test_dropping_masks_changes_no_key():
    g = _chain()
    kept = {}
    with_masks = list(g.keygen_stream(DealerRng(b"same"), kept))
    without = list(g.keygen_stream(DealerRng(b"same")))
    assert set(kept) == {n.id for n in g.nodes}            # a caller that asks for the masks gets them all
    for (i0, a0, a1), (i1, b0, b1) in zip(with_masks, without):
        assert i0 == i1
        for ka, kb in ((a0, b0), (a1, b1)):
            assert ka.keys() == kb.keys()
            assert all(np.array_equal(np.asarray(ka[f]), np.asarray(kb[f])) for f in ka), i0


def test_splitting_a_seeded_field_holds_one_narrow_copy_of_it():
    """The dealer's split of a large share field (runtime/seeded_shares.py ``split_key``) holds
    the other party's new share in the field's narrowest type plus one chunk's temporaries:
    numpy's peak, traced, stays under 1.5 x the uint64 field. The first version held the sum,
    the stream and the difference as whole uint64 copies (a batch-8 GELU's 0.55 GB field was
    the allocation that failed on an H100 shared with both parties)."""
    import tracemalloc

    from fusec.runtime.backend import get_backend
    from fusec.runtime.layout import KeyField, KeyLayout
    from fusec.runtime.seeded_shares import split_key

    count, bits = 1 << 21, 44
    f = KeyField("rho", (count,), bits, share=True)
    slot = KeyLayout([("g", "scalar", count, (f,))]).slot("g")
    gen = np.random.default_rng(3)
    k0 = {"rho": gen.integers(0, 1 << bits, count, dtype=np.uint64)}
    k1 = {"rho": gen.integers(0, 1 << bits, count, dtype=np.uint64)}
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        split_key(slot, 0, k0, k1, DealerRng(b"split"), get_backend("cpu"), chunk=1 << 16)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * 8 * count, peak
