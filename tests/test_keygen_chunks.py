"""A large elementwise gate keyed in element chunks (runtime/keygen_chunks.py): the dealer's memory
is a chunk's, and the keys open what one keygen of the whole gate opens."""
from __future__ import annotations

import numpy as np
import pytest

from fusec.runtime import keygen_chunks, ring
from fusec.runtime.backend import get_backend
from fusec.runtime.dealer import SetGenerator, write_keys
from fusec.runtime.gates.base import Gate, GateCost
from fusec.runtime.gates.scalar import PackedLookup, ScalarGate
from fusec.runtime.gates.truncation import TruncateNarrow, TruncateSlack
from fusec.runtime.graph import GateGraph
from fusec.runtime.keygen_chunks import element_axes, gate_keygen
from fusec.runtime.keyio import KeyFile
from fusec.runtime.rng import DealerRng
from tests.harness import gate_outputs
from tests.test_device_path import every_gate, gate_inputs

E = 300         # keyed as chunks of 128, 128 and 44 elements
CHUNK = 128


class _Affine(Gate):
    """A gate whose keys are a known function of its input mask (no draws): an oracle for where
    each chunk's keys land. Its ``cw_seed`` field has the element axis second, as a DPF's
    correction words do, and is not a share."""

    kind = "affine_test"
    elementwise_keys = True
    keyed: list[int] = []

    def fields(self):
        return [("a", (self.elements,), 50), ("cw_seed", (3, self.elements, 2), 64)]

    def keygen(self, rng, in_masks):
        type(self).keyed.append(self.elements)
        r = np.asarray(in_masks[0], np.uint64).reshape(-1)
        cw = np.stack([np.stack([r + np.uint64(lv), r * np.uint64(lv + 2)], axis=1) for lv in range(3)])
        a0 = r & np.uint64(ring.mask(50))
        return r + np.uint64(1), {"a": a0, "cw_seed": cw}, {"a": (a0 * np.uint64(3)) & np.uint64(ring.mask(50)),
                                                           "cw_seed": cw}

    def eval(self, party, key, inputs, be):
        yield from ()
        return inputs[0]

    def cost(self):
        return GateCost(0, 0, 0, 0)


def test_chunks_land_where_one_keygen_puts_each_element():
    _Affine.keyed = []
    gate = _Affine(E)
    r = np.arange(E, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    assert element_axes(gate) == {"a": 0, "cw_seed": 1}
    out, k0, k1 = gate_keygen(gate, DealerRng(b"affine"), [r], chunk=CHUNK)
    assert _Affine.keyed == [128, 128, 44]
    cw = np.stack([np.stack([r + np.uint64(lv), r * np.uint64(lv + 2)], axis=1) for lv in range(3)])
    assert np.array_equal(out, r + np.uint64(1))
    assert np.array_equal(k0["a"], r & np.uint64(ring.mask(50)))
    assert np.array_equal(k1["a"], (r * np.uint64(3)) & np.uint64(ring.mask(50)))
    assert np.array_equal(k0["cw_seed"], cw) and np.array_equal(k1["cw_seed"], cw)
    _Affine.keyed = []
    gate_keygen(gate, DealerRng(b"affine"), [r], chunk=E)       # not larger than a chunk: one keygen
    assert _Affine.keyed == [E]


def test_a_chunk_is_a_whole_number_of_stream_blocks():
    with pytest.raises(ValueError, match="multiple of 128"):
        gate_keygen(_Affine(E), DealerRng(b"x"), [np.zeros(E, np.uint64)], chunk=100)


def _chunked_kinds():
    return [(label, g) for label, g in every_gate(E=E) if g.elementwise_keys]


def test_the_large_nonlinear_gates_are_keyed_in_chunks_and_the_others_are_not():
    kinds = {type(s) for _, g in _chunked_kinds() for s in getattr(g, "stages", [g])}
    assert {PackedLookup, TruncateNarrow, TruncateSlack} <= kinds
    assert any(isinstance(g, ScalarGate) for _, g in _chunked_kinds())
    for label, g in every_gate(E=E):
        if g.elementwise_keys:      # a faithful resize: the chunk gate of all E elements is the gate
            assert element_axes(g) is not None, label
            assert g.with_elements(E).fields() == g.fields(), label
        else:
            with pytest.raises(TypeError):
                g.with_elements(1)


def _opened(gate, keys, us, r_in, r_out):
    """Both parties' evaluation on ``keys``; the output's value (the opened output less its mask)."""
    out = gate_outputs(gate, keys, us)
    assert np.array_equal(out[0], out[1])
    bits = getattr(gate, "out_bits", None) or gate.bits
    return (out[0].reshape(-1) - np.asarray(r_out, np.uint64).reshape(-1)) & np.uint64(ring.mask(bits))


@pytest.mark.parametrize("label", [label for label, _ in _chunked_kinds()])
def test_a_gate_keyed_in_chunks_opens_what_one_keygen_opens(label):
    """Same input masks, same public inputs: a one-stage gate's output value is a function of
    the input and its mask alone (a truncation's rounding bit, a lookup's neighbour), so the
    keys made in three chunks and the keys of one keygen give the same values, element for
    element, though every key word is another draw. In a chain the truncation after a lookup
    rounds by the lookup's fresh output mask: there the values may differ by one unit, as two
    keygens of the whole gate do."""
    gate = dict(_chunked_kinds())[label]
    sizes, in_bits = gate_inputs(gate)
    rng = DealerRng(b"chunks-" + label.encode())
    r_in = [rng.ring(k, b) for k, b in zip(sizes, in_bits)]
    gen = np.random.default_rng(len(label))     # inputs inside every gate's proven range: |x| < 2^14
    x = [gen.integers(-(1 << 14), 1 << 14, k).astype(np.uint64) for k in sizes]
    us = [(xi + np.asarray(ri, np.uint64)) & np.uint64(ring.mask(b)) for xi, ri, b in zip(x, r_in, in_bits)]
    whole = gate.keygen(DealerRng(b"whole"), r_in)
    chunked = gate_keygen(gate, DealerRng(b"chunked"), r_in, chunk=CHUNK)
    assert isinstance(chunked[1][next(iter(chunked[1]))], np.ndarray)
    assert any(not np.array_equal(chunked[1][k], whole[1][k]) for k in whole[1])    # other draws
    want = _opened(gate, whole[1:], us, r_in, whole[0])
    got = _opened(gate, chunked[1:], us, r_in, chunked[0])
    bits = getattr(gate, "out_bits", None) or gate.bits
    diff = (got - want) & np.uint64(ring.mask(bits))
    one_unit = (diff == 1) | (diff == ring.mask(bits))
    off = diff != 0 if len(getattr(gate, "stages", [gate])) == 1 else (diff != 0) & ~one_unit
    assert not off.any(), (label, np.flatnonzero(off)[:5])


def _two_gate_graph(gate) -> GateGraph:
    """Two copies of ``gate`` on one input: the seeded shares then go one gate to each party."""
    g = GateGraph()
    g.input("x", gate.elements, gate.bits)
    g.add("a", gate, ["x"])
    g.add("b", gate.with_elements(gate.elements), ["x"])
    g.output("y", "a")
    g.output("z", "b")
    return g


@pytest.mark.parametrize("elements", [E, E + 4], ids=["runs-not-whole-bytes", "packed-where-keyed"])
def test_key_files_of_a_gate_keyed_in_chunks_open_what_its_keys_open(tmp_path, monkeypatch, elements):
    """Through the dealer: keyed in chunks, each chunk split into a seed for one party where it
    was keyed, and packed into files; a server's set holds the keys ``graph.keygen`` makes
    from the same seed, which are chunked the same way and joined as host arrays. At 304
    elements each chunk is packed into the slot's bytes where it is keyed (PackedParts); at 300
    a DPF's one-bit correction words (levels x 300) do not start each level on a byte, and the
    dealer packs the joined host arrays instead."""
    monkeypatch.setattr(keygen_chunks, "KEYGEN_CHUNK_ELEMENTS", CHUNK)
    label = next(label for label, g in _chunked_kinds() if isinstance(g, ScalarGate))
    g = _two_gate_graph(dict(_chunked_kinds())[label].with_elements(elements))
    layout = g.layout()
    gen = SetGenerator(g, get_backend("cpu"), DealerRng(b"x"))
    assert gen.split_in_keygen == {"a", "b"}        # each seeded to one party, split chunk by chunk
    assert gen.packed_in_keygen == (set() if elements % 8 else {"a", "b"})
    write_keys(g, tmp_path, 1, seed=b"chunked-files")
    k0, k1, _ = g.keygen(DealerRng(b"chunked-files"))
    for p, want in ((0, k0), (1, k1)):
        with KeyFile.open(tmp_path / f"p{p}.key", layout, p, tmp_path / "state") as kf:
            r = kf.claim(0)
            got = {gid: r.read_gate(gid) for gid in layout.gate_ids}
        for s in layout.slots:
            for f in s.fields:
                if not f.share:
                    assert np.array_equal(got[s.gate_id][f.name], want[s.gate_id][f.name]), (p, s.gate_id, f.name)
        if p == 0:
            first = got
    for s in layout.slots:
        for f in s.fields:
            if f.share:
                total = (first[s.gate_id][f.name] + got[s.gate_id][f.name]) & np.uint64(ring.mask(f.bits))
                want = (np.asarray(k0[s.gate_id][f.name], np.uint64) + np.asarray(k1[s.gate_id][f.name], np.uint64))
                assert np.array_equal(total, want & np.uint64(ring.mask(f.bits))), (s.gate_id, f.name)


def test_on_the_device_a_chunked_gate_holds_a_chunk_and_its_keys_go_to_the_host(monkeypatch):
    """On the fake device (tests/fakedevice.py), every device array made while a 4,096-element
    GELU is keyed: in chunks of 512, the largest is an eighth of the largest keyed whole (the
    output mask, 8 bytes an element, is the only whole-gate array left on the device), and the
    keys come back as host arrays."""
    from tests import fakedevice
    from fusec.runtime.gates.catalog import _narrow_gelu, gelu_spec

    made: list[int] = []
    device = fakedevice._device

    def recorded(res):
        out = device(res)
        if isinstance(out, fakedevice.DeviceArray):
            made.append(out.nbytes)
        return out

    monkeypatch.setattr(fakedevice, "_device", recorded)
    N, chunk = 4096, 512
    gate = _narrow_gelu(N, gelu_spec(50, 12), 50, 12, 12)
    be = fakedevice.FakeDeviceBackend()
    largest = {}
    with be.activate():
        for c in (0, chunk):
            rng = be.dealer_rng(b"device-chunks")
            r = rng.ring(N, 50)
            made.clear()
            out, k0, k1 = gate_keygen(gate, rng, [r], chunk=c)
            largest[c] = max(made)
            assert isinstance(out, fakedevice.DeviceArray) and out.size == N
            kinds = {type(v) for k in (k0, k1) for v in k.values()}
            assert kinds == ({fakedevice.DeviceArray} if c == 0 else {np.ndarray}), c
    assert largest[0] > 8 * N * 8
    assert largest[chunk] <= max(largest[0] * chunk // N, 8 * N), largest


def test_an_insecure_graph_counts_a_gate_packed_where_keyed_as_wholly_keyed(tmp_path, monkeypatch):
    """An INSECURE (unpadded) build's dealer counts the bytes each set really keys; a gate packed
    chunk by chunk hands over bytes, not arrays, and keys its whole slot: the count is the
    files' bytes, as for a padded build's every gate."""
    from fusec.runtime.keyfile import data_offset
    from fusec.runtime.seeded_shares import party_layout

    monkeypatch.setattr(keygen_chunks, "KEYGEN_CHUNK_ELEMENTS", CHUNK)
    label = next(label for label, g in _chunked_kinds() if isinstance(g, ScalarGate))
    g = _two_gate_graph(dict(_chunked_kinds())[label].with_elements(E + 4))
    g.insecure = True
    assert SetGenerator(g, get_backend("cpu"), DealerRng(b"x")).packed_in_keygen == {"a", "b"}
    timings: dict = {}
    write_keys(g, tmp_path, 1, timings=timings)
    lay = g.layout()
    assert timings["key_bytes_used"] == sum(party_layout(lay, p).set_nbytes for p in (0, 1)) / 2
    assert sum((tmp_path / f"p{p}.key").stat().st_size for p in (0, 1)) - 2 * data_offset(1) == \
        2 * timings["key_bytes_used"]


@pytest.mark.parametrize("seeded", [None, 0, 1], ids=["unseeded", "p0-seeded", "p1-seeded"])
@pytest.mark.parametrize("label", [label for label, _ in _chunked_kinds()])
def test_chunks_packed_where_keyed_are_the_joined_keys_packed(label, seeded):
    """:class:`PackedParts` packs each chunk's keys (after its seeded split) into the parties'
    slot bytes at the chunk's bits; the oracle is the layout's packing of the same keys joined
    as whole host arrays (:class:`HostArrays`): the same bytes, padding included, for every
    elementwise gate kind, at 304 elements in chunks of 128, 128 and 48."""
    from fusec.runtime.keygen_chunks import HostArrays, PackedParts
    from fusec.runtime.layout import pack_gate_array
    from fusec.runtime.seeded_shares import party_layout, seeded_parties, split_part

    gate = dict(_chunked_kinds())[label].with_elements(E + 4)
    layout = _two_gate_graph(gate).layout()
    party = seeded_parties(layout).get("a") if seeded is not None else None
    if seeded is not None and party is None:
        pytest.skip("no share field to seed")
    slots = tuple(party_layout(layout, p).slot("a") if party is not None else layout.slot("a") for p in (0, 1))
    seed = np.array([0x1234, 0x5678], np.uint64)
    split = (lambda first, k0, k1: split_part(layout.slot("a"), party, k0, k1, seed, be, first)) \
        if party is not None else None
    be = get_backend("cpu")
    r = DealerRng(b"mask").ring(gate.elements, gate.bits)
    axes = element_axes(gate)
    assert PackedParts.fits(gate, axes, slots, CHUNK)
    _, *joined = gate_keygen(gate, DealerRng(b"packed"), [r], chunk=CHUNK, sink=HostArrays(gate, axes, split))
    _, *packed = gate_keygen(gate, DealerRng(b"packed"), [r], chunk=CHUNK,
                             sink=PackedParts(gate, axes, slots, be, split))
    for p in (0, 1):
        assert np.array_equal(packed[p], pack_gate_array(slots[p], joined[p])), (label, p)


def test_a_field_whose_runs_are_not_whole_bytes_is_not_packed_where_keyed():
    """The rule :class:`PackedParts` keys by: every chunk must start each field's runs on a byte.
    ``cw_seed`` here has the element axis second, n x 2 values of 1 bit per run (a DPF's
    one-bit correction words are so): runs of 604 bits at n = 302, of 608 at 304."""
    from fusec.runtime.keygen_chunks import PackedParts
    from fusec.runtime.layout import KeyField, KeyLayout

    def slots(n: int, bits: int):
        fields = (KeyField("a", (n,), 50), KeyField("cw_seed", (3, n, 2), bits))
        return (KeyLayout([("g", "k", n, fields)]).slot("g"),) * 2

    for n, bits, fits in ((302, 1, False), (304, 1, True), (302, 64, True), (302, 4, True)):
        assert PackedParts.fits(_Affine(n), element_axes(_Affine(n)), slots(n, bits), CHUNK) == fits, (n, bits)
    assert not PackedParts.fits(_Affine(304), element_axes(_Affine(304)), slots(304, 1), 100)   # not on a byte


@pytest.mark.parametrize("bits", [1, 13, 44, 64])
def test_a_field_split_in_parts_is_the_field_split_whole(bits):
    """The seeded split of a gate keyed in chunks: parts of 128, 128 and 44 elements of a field
    of 300 x (3, 2) values, each split with the gate's one seed from its first element on, are
    the whole field's split (each part takes the seed's stream where the whole split does)."""
    from fusec.runtime.layout import KeyField, KeyLayout
    from fusec.runtime.seeded_shares import SEED_FIELD, draw_seed, split_key, split_part

    gen = np.random.default_rng(bits)
    f = KeyField("x", (E, 3, 2), bits, share=True)
    slot = KeyLayout([("g", "k", E, (f,))]).slot("g")
    a, b = (gen.integers(0, 1 << 63, (E, 3, 2), dtype=np.uint64) & np.uint64(ring.mask(bits)) for _ in range(2))
    be = get_backend("cpu")
    whole = split_key(slot, 1, {"x": a}, {"x": b}, DealerRng(b"seed"), be)
    seed = draw_seed(DealerRng(b"seed"))
    assert np.array_equal(whole[1][SEED_FIELD], seed)
    parts = [split_part(slot, 1, {"x": a[lo:lo + CHUNK]}, {"x": b[lo:lo + CHUNK]}, seed, be, lo)
             for lo in range(0, E, CHUNK)]
    joined = np.concatenate([p[0]["x"] for p in parts])
    assert joined.shape == (E, 3, 2) and np.array_equal(joined, whole[0]["x"])
    if (6 * bits) % 128:        # a part from element 1 starts at value 6, inside a stream block
        with pytest.raises(ValueError, match="stream block"):
            split_part(slot, 1, {"x": a[1:]}, {"x": b[1:]}, seed, be, 1)


def test_a_gate_is_chunked_by_the_size_of_its_keys():
    """By default a gate is keyed whole while its keys (both parties, as uint64) fit 1 GiB, as
    BERT-base's GELU at batch 1 does, and in chunks whose keys fit 256 MiB past that, as
    GPT-2's at batch 8 (the dealer's out-of-memory on one H100) is."""
    from fusec.runtime.gates.catalog import _narrow_gelu, gelu_spec
    from fusec.runtime.keygen_chunks import KEYGEN_CHUNK_BYTES, KEYGEN_WHOLE_BYTES, chunk_elements

    spec = gelu_spec(50, 12)
    small, large = (_narrow_gelu(n, spec, 50, 12, 12) for n in (393_216, 3_145_728))
    per_element = 16 * sum(int(np.prod(shape)) for _, shape, _ in large.fields()) // large.elements
    assert small.elements * per_element <= KEYGEN_WHOLE_BYTES < large.elements * per_element
    assert chunk_elements(small) is None
    c = chunk_elements(large)
    assert c % 128 == 0 and c * per_element <= KEYGEN_CHUNK_BYTES < (c + 128) * per_element
    assert chunk_elements(_Affine(10 ** 6)) is None         # 10^6 x 112 bytes: whole


class _ShareSecond(_Affine):
    """An additive share (``rho``) with its element axis second: a chunk's seeded split could not
    start it at the chunk's first element, so the gate is keyed whole."""

    kind = "share_second_test"

    def fields(self):
        return [("rho", (3, self.elements), 50)]


def test_a_share_whose_elements_are_not_first_keeps_the_gate_whole():
    assert element_axes(_ShareSecond(E)) is None
    assert element_axes(_Affine(E)) == {"a": 0, "cw_seed": 1}     # a correction word (not a share) may be second
