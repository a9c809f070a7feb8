"""Seed-compressed shares (runtime/seeded_shares.py): a party's shares of a gate from a seed.

The oracles: every gate kind evaluated by both parties on keys that went through the dealer's
split, the key files' packing and a server's inflation opens the same output as on the keys
keygen made; a seeded field's bytes are numpy's packing of the PRG stream cut into fields;
inflating in place gives what inflating from a separate buffer gives.
"""
from __future__ import annotations

import numpy as np
import pytest

from fusec.runtime import ring
from fusec.runtime.backend import get_backend
from fusec.runtime.dealer import write_keys
from fusec.runtime.gates.base import UNSHARED_FIELDS, is_share_field
from fusec.runtime.keyio import KeyFile
from fusec.runtime.layout import KeyField, KeyLayout, pack_gate_array, unpack_gate_key
from fusec.runtime.prg import CpuPrg, blocks_needed, words_to_fields
from fusec.runtime.rng import DealerRng
from fusec.runtime.seeded_shares import (SEED_FIELD, SEED_NBYTES, TWEAK_SEEDED_SHARE, InflateBehind, inflate,
                                         party_layout, seeded_parties, split_key)
from tests.harness import gate_outputs
from tests.test_device_path import every_gate, gate_inputs


def _stored_set(layout: KeyLayout, party: int, keys: dict) -> np.ndarray:
    """``party``'s set as its key file holds it: each slot packed in the party's layout."""
    stored = party_layout(layout, party)
    return np.concatenate([pack_gate_array(s, keys[s.gate_id]) for s in stored.slots])


def _read_back(layout: KeyLayout, party: int, stored_bytes: np.ndarray) -> dict:
    """A server's read: the stored bytes into the tail of a full set's buffer, inflated."""
    buf = np.zeros(layout.set_nbytes, np.uint8)
    buf[layout.set_nbytes - stored_bytes.size:] = stored_bytes
    inflate(layout, party, buf)
    return {s.gate_id: unpack_gate_key(s, buf[s.offset:s.end]) for s in layout.slots}


@pytest.mark.parametrize("label", [label for label, _ in every_gate(E=40)])
def test_every_gate_kind_opens_the_same_output_from_seeded_shares(label):
    """Two copies of the gate in one layout, so one is seeded to each party; keys through the
    dealer's split, each party's file packing and the server's inflation open what keygen's
    keys open. A field wrongly taken for a share (a mask one party holds alone, a correction
    word) changes the output here."""
    gate = dict(every_gate(E=40))[label]
    fields = gate.key_fields()
    layout = KeyLayout([(g, gate.kind, gate.elements, fields) for g in ("a", "b")])
    rng = DealerRng(b"seeded-" + label.encode())
    sizes, in_bits = gate_inputs(gate)
    seeded = seeded_parties(layout)
    if any(f.share for f in fields) and sum(f.nbytes for f in fields if f.share) > SEED_NBYTES:
        assert seeded == {"a": 0, "b": 1}
    made, split = {}, ({}, {})
    for g in ("a", "b"):
        _, k0, k1 = gate.keygen(rng, [rng.ring(k, b) for k, b in zip(sizes, in_bits)])
        made[g] = (k0, k1)
        split[0][g], split[1][g] = split_key(layout.slot(g), seeded.get(g), k0, k1, rng, get_backend("cpu"))
    read = [_read_back(layout, p, _stored_set(layout, p, split[p])) for p in (0, 1)]
    for g in ("a", "b"):
        us = [rng.ring(k, b) for k, b in zip(sizes, in_bits)]
        want = gate_outputs(gate, made[g], us)
        got = gate_outputs(gate, (read[0][g], read[1][g]), us)
        assert np.array_equal(want[0], want[1]) and np.array_equal(got[0], want[0]), (label, g)
        if g in seeded:     # the seeded party's share fields really changed: they came from the seed
            p = seeded[g]
            changed = [f.name for f in fields if f.share and f.count and f.bits > 8
                       and not np.array_equal(read[p][g][f.name], made[g][p][f.name])]
            assert changed, label


def test_a_seeded_field_is_the_numpy_packing_of_its_stream_cut_into_fields():
    """What a server writes (the stream's bytes) against numpy: words_to_fields of the stream,
    packed by ring.pack_bits, at every width and at counts that end mid-byte."""
    prg, seed = CpuPrg(), np.array([0x0123456789ABCDEF, 0xFEDCBA9876543210], np.uint64)
    seeded = 0
    for bits in range(1, 65):
        for count in (1, 7, 13, 64, 129):
            shape = (count,)
            f = KeyField("x", shape, bits, share=True)
            lay = KeyLayout([("g", "k", count, (f,))])
            stored = party_layout(lay, 0)
            if stored == lay:       # too small to seed: the field stays in both files
                assert f.nbytes <= SEED_NBYTES
                continue
            raw = np.zeros(stored.set_nbytes, np.uint8)
            raw[:SEED_NBYTES] = seed.view(np.uint8)
            got = _read_back(lay, 0, raw)["g"]["x"]
            stream = prg.value_blocks(seed.reshape(1, 2), blocks_needed(count, bits), TWEAK_SEEDED_SHARE)
            assert np.array_equal(got, words_to_fields(stream, count, bits).reshape(shape)), (bits, count)
            seeded += 1
    assert seeded > 200


@pytest.mark.parametrize("chunk", [128, 384, 1 << 22])
def test_the_dealer_splits_a_field_in_chunks_as_in_one_piece(chunk):
    """The other party's share, split ``chunk`` elements at a time, is (a + b - stream) mod
    2^bits where the stream is the seed's whole value stream cut into fields (numpy, in one
    piece), at widths that do and do not divide 128 and counts that end mid-chunk; it is held
    in the narrowest unsigned type of its width."""
    gen = np.random.default_rng(chunk)
    for bits in (1, 7, 8, 13, 31, 50, 64):
        count = 1000
        f = KeyField("x", (count,), bits, share=True)
        slot = KeyLayout([("g", "k", count, (f,))]).slot("g")
        a = gen.integers(0, 1 << 63, count, dtype=np.uint64) & np.uint64(ring.mask(bits))
        b = gen.integers(0, 1 << 63, count, dtype=np.uint64) & np.uint64(ring.mask(bits))
        rng = DealerRng(b"chunks")
        mine, theirs = split_key(slot, 0, {"x": a}, {"x": b}, rng, get_backend("cpu"), chunk=chunk)
        seed = mine[SEED_FIELD]
        stream = words_to_fields(CpuPrg().value_blocks(seed.reshape(1, 2), blocks_needed(count, bits),
                                                       TWEAK_SEEDED_SHARE), count, bits).reshape(-1)
        want = (a + b - stream) & np.uint64(ring.mask(bits))
        assert np.array_equal(theirs["x"].astype(np.uint64), want), bits
        assert theirs["x"].dtype.itemsize * 8 == next(w for w in (8, 16, 32, 64) if bits <= w)


def test_a_split_chunk_must_start_on_a_stream_block():
    f = KeyField("x", (300,), 13, share=True)
    slot = KeyLayout([("g", "k", 300, (f,))]).slot("g")
    x = np.zeros(300, np.uint64)
    with pytest.raises(ValueError, match="multiple of 128"):
        split_key(slot, 0, {"x": x}, {"x": x}, DealerRng(b"c"), get_backend("cpu"), chunk=100)


def _random_layout(rng: np.random.Generator, slots: int) -> KeyLayout:
    entries = []
    for i in range(slots):
        fields = tuple(KeyField(f"f{j}", (int(rng.integers(0, 300)),), int(rng.integers(1, 65)),
                                share=bool(rng.random() < 0.6)) for j in range(int(rng.integers(1, 5))))
        entries.append((f"g{i}", "k", 1, fields))
    return KeyLayout(entries)


def _inflated_oracle(layout: KeyLayout, party: int, raw: np.ndarray) -> np.ndarray:
    """The full set slot by slot from untouched stored bytes: each seeded field numpy's cut of
    the seed's whole value stream (value_blocks, in one piece)."""
    stored = party_layout(layout, party)
    want = np.zeros(layout.set_nbytes, np.uint8)
    prg = CpuPrg()
    for full, st in zip(layout.slots, stored.slots):
        src = raw[st.offset:st.end]
        if seeded_parties(layout).get(full.gate_id) != party:
            want[full.offset:full.end] = src
            continue
        seed_words = src[:SEED_NBYTES].view(np.uint64).reshape(1, 2)
        kept = unpack_gate_key(st, src)
        arrays, j = {}, 0
        for f in full.fields:
            if f.share:
                blocks = prg.value_blocks(seed_words, blocks_needed(f.count, f.bits),
                                          TWEAK_SEEDED_SHARE | np.uint64(j))
                arrays[f.name] = words_to_fields(blocks, f.count, f.bits).reshape(f.shape)
                j += 1
            else:
                arrays[f.name] = kept[f.name]
        want[full.offset:full.end] = pack_gate_array(full, arrays)
    return want


def _assert_same_fields(layout: KeyLayout, got: np.ndarray, want: np.ndarray, what) -> None:
    """Random stored bytes leave junk in the padding of kept fields: compare field by field."""
    for s in layout.slots:
        a = unpack_gate_key(s, got[s.offset:s.end])
        b = unpack_gate_key(s, want[s.offset:s.end])
        assert all(np.array_equal(a[k], b[k]) for k in a), (what, s.gate_id)


@pytest.mark.parametrize("how", ["whole", "pieces", "arriving"])
@pytest.mark.parametrize("seed", range(4))
def test_inflating_in_place_gives_what_a_separate_buffer_gives(seed, how, monkeypatch):
    """The set read into the tail of its own buffer and inflated forward equals the same set
    inflated from a copy (no byte read after it was overwritten), for random layouts: with the
    streams written as whole fields, in pieces of one block (each a worker thread's job), and
    behind bytes that arrive in random pieces from another thread (runtime/keystream.py)."""
    from fusec.runtime import seeded_shares
    if how != "whole":
        monkeypatch.setattr(seeded_shares, "STREAM_JOB_BLOCKS", 1)
    rng = np.random.default_rng(seed)
    layout = _random_layout(rng, 40)
    for p in (0, 1):
        raw = rng.integers(0, 256, party_layout(layout, p).set_nbytes, dtype=np.uint8)
        in_place = np.empty(layout.set_nbytes, np.uint8)
        tail = in_place[layout.set_nbytes - raw.size:]
        if how != "arriving":
            tail[:] = raw
            inflate(layout, p, in_place)
        else:
            tail[:] = 0xA5      # not yet arrived
            cuts = np.sort(rng.integers(0, raw.size, 30))
            with InflateBehind(layout, p, in_place, raw.size) as arrival:
                for a, b in zip([0, *cuts], [*cuts, raw.size]):
                    tail[a:b] = raw[a:b]
                    arrival.advance(int(b))
        _assert_same_fields(layout, in_place, _inflated_oracle(layout, p, raw), (seed, how, p))


def test_an_abandoned_receive_stops_the_inflation_behind_it():
    """A receive that fails half-way leaves the block with its own error, and the inflation
    thread waiting for the rest of the bytes ends instead of hanging."""
    layout = _random_layout(np.random.default_rng(9), 40)
    stored = party_layout(layout, 0)
    buf = np.zeros(layout.set_nbytes, np.uint8)
    behind = InflateBehind(layout, 0, buf, stored.set_nbytes)
    with pytest.raises(ConnectionError, match="dealer gone"):
        with behind as arrival:
            arrival.advance(stored.set_nbytes // 3)
            raise ConnectionError("dealer gone")
    assert not behind._thread.is_alive()


@pytest.mark.parametrize("seed", range(4))
def test_the_two_key_files_stay_within_one_slot_of_each_other(seed):
    rng = np.random.default_rng(100 + seed)
    layout = _random_layout(rng, 60)
    sizes = [party_layout(layout, p).set_nbytes for p in (0, 1)]
    seeded = seeded_parties(layout)
    savings = [sum(f.nbytes for f in s.fields if f.share) - SEED_NBYTES for s in layout.slots]
    assert abs(sizes[0] - sizes[1]) <= max([0] + savings)
    assert sum(sizes) == 2 * layout.set_nbytes - sum(v for v in savings if v > 0)
    assert set(seeded) == {s.gate_id for s, v in zip(layout.slots, savings) if v > 0}


def test_a_layout_without_shares_keeps_its_digest_and_files():
    """Hand-made layouts (fields not marked shares) store every field in both files."""
    lay = KeyLayout([("g", "k", 4, (KeyField("a", (4,), 50),))])
    assert party_layout(lay, 0) == lay == party_layout(lay, 1)
    assert '"share"' not in lay.to_json()
    buf = np.arange(lay.set_nbytes, dtype=np.uint8)
    buf.flags.writeable = False     # a server's read of such a set writes nothing (a sigma build's 17 GB)
    again = KeyLayout([("g", "k", 4, (KeyField("a", (4,), 50),))])      # an equal layout, another object
    assert inflate(again, 0, buf) is buf and inflate(lay, 1, buf) is buf
    marked = KeyLayout([("g", "k", 4, (KeyField("a", (4,), 50, share=True),))])
    assert marked.digest() != lay.digest() and KeyLayout.from_json(marked.to_json()) == marked


def test_which_fields_are_shares():
    assert {"root", "cw_seed", "cw_tr", "cw_leaf", "cw_v", "cw_final", "mask", "pieces_used"} == UNSHARED_FIELDS
    assert is_share_field("0.rho_a") and is_share_field("r_out") and is_share_field("lt.c")
    assert not is_share_field("0.lt.root") and not is_share_field("dcf.cw_v") and not is_share_field("mask")


@pytest.mark.parametrize("chunk", [None, 1024])
def test_key_files_of_a_graph_hold_seeds_and_open_the_same_keys(tmp_path, monkeypatch, chunk):
    """The dealer's files: each smaller than the full layout by what its seeded slots save, and
    a server's claimed set unpacks to keys whose sums are keygen's, with the seeded party's
    share fields equal to its seed's stream; also with the set read in many chunks, inflated
    behind them as they complete (``chunk``: the key files' chunk size)."""
    from fusec.runtime import keyfile
    from tests.test_padding_ablation import _graph

    if chunk:
        monkeypatch.setattr(keyfile, "CHUNK_BYTES", chunk)
    graph = _graph(True, False)
    layout = graph.layout()
    seeded = seeded_parties(layout)
    assert seeded, "the test graph has gates with shares"
    write_keys(graph, tmp_path, 2, seed=b"files")
    for p in (0, 1):
        size = (tmp_path / f"p{p}.key").stat().st_size
        with KeyFile.open(tmp_path / f"p{p}.key", layout, p, tmp_path / "state") as kf:
            assert kf.header.set_nbytes == party_layout(layout, p).set_nbytes
            assert kf.set_nbytes == layout.set_nbytes
            assert size == kf.header.file_nbytes
    k0, k1, _ = graph.keygen(DealerRng(b"files"))    # the dealer's first set, before the split
    sets = []
    for p in (0, 1):
        with KeyFile.open(tmp_path / f"p{p}.key", layout, p, tmp_path / "state") as kf:
            r = kf.claim(0)
            sets.append({g: r.read_gate(g) for g in layout.gate_ids})
    for s in layout.slots:
        for f in s.fields:
            a, b = sets[0][s.gate_id][f.name], sets[1][s.gate_id][f.name]
            if f.share:
                want = (np.asarray(k0[s.gate_id][f.name], np.uint64) + np.asarray(k1[s.gate_id][f.name], np.uint64))
                assert np.array_equal((a + b) & ring.mask(f.bits), want & ring.mask(f.bits)), (s.gate_id, f.name)
            else:
                assert np.array_equal(a, k0[s.gate_id][f.name]) and np.array_equal(b, k1[s.gate_id][f.name])
    assert all(SEED_FIELD not in sets[p][g] for p in (0, 1) for g in layout.gate_ids)


def test_a_damaged_key_file_is_refused_while_its_set_inflates_behind_the_reads(tmp_path, monkeypatch):
    """A set read in many chunks, inflated behind them: a flipped byte still fails the checksum,
    and a truncated file still says so, with no read or inflation left running."""
    import threading

    from fusec.errors import KeyFileError
    from fusec.runtime import keyfile
    from tests.test_padding_ablation import _graph

    monkeypatch.setattr(keyfile, "CHUNK_BYTES", 1024)
    graph = _graph(True, False)
    layout = graph.layout()
    write_keys(graph, tmp_path, 1, seed=b"damaged")
    path = tmp_path / "p0.key"
    with KeyFile.open(path, layout, 0, tmp_path / "state") as kf:
        start, n = kf.header.set_offset(0), kf.header.set_nbytes
    raw = bytearray(path.read_bytes())
    raw[start + n // 2] ^= 0x40
    path.write_bytes(bytes(raw))
    with KeyFile.open(path, layout, 0, tmp_path / "state2") as kf:
        with pytest.raises(KeyFileError, match="corrupted"):
            kf.claim(0)
    path.write_bytes(bytes(raw[:start + n // 2]))
    with pytest.raises(KeyFileError, match="truncated"):
        with KeyFile.open(path, layout, 0, tmp_path / "state3") as kf:
            kf.claim(0)
    assert not [t for t in threading.enumerate() if t.name == "fusec-inflate-behind"]


def test_sets_inflate_on_several_threads_at_once(monkeypatch):
    """Both parties in one process, or a server reading its next set in the background, inflate
    at the same moment: each thread uses an AES encryptor of its own (a shared one raised
    "Already borrowed" in CI), and every thread's set comes out right."""
    import threading

    from fusec.runtime import prg as prg_module

    users: dict[object, set[int]] = {}      # keyed by the encryptor itself: held, so no id is reused
    call = prg_module.AesMmo.of_sigma        # every AES call of an AesMmo goes through it

    def recording(self, flat):
        users.setdefault(self, set()).add(threading.get_ident())
        return call(self, flat)

    monkeypatch.setattr(prg_module.AesMmo, "of_sigma", recording)
    layout = KeyLayout([(f"g{i}", "k", 1, (KeyField("a", (4_000,), 50, share=True), KeyField("b", (3,), 7)))
                        for i in range(8)])
    stored = [np.random.default_rng(p).integers(0, 256, party_layout(layout, p).set_nbytes, dtype=np.uint8)
              for p in (0, 1)]

    def read(p: int) -> np.ndarray:
        buf = np.empty(layout.set_nbytes, np.uint8)
        buf[layout.set_nbytes - stored[p].size:] = stored[p]
        return inflate(layout, p, buf)

    want = [read(p) for p in (0, 1)]
    errors, got = [], []

    def work(p: int) -> None:
        try:
            for _ in range(3):
                got.append((p, read(p)))
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i % 2,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(got) == 12 and all(np.array_equal(b, want[p]) for p, b in got)
    assert users and all(len(threads_of) == 1 for threads_of in users.values())


def test_seeded_shares_option_on_for_the_fused_gates_off_for_sigma():
    """--seeded-shares auto: on for the fused gates, off for the SIGMA baseline (its keys hold
    both parties' shares, as SIGMA's do); on/off override it; a graph with it off marks no field."""
    from fusec.passes.options import CompileOptions
    from tests.test_padding_ablation import _graph

    assert CompileOptions(gates="fused").seeded_shares is True
    assert CompileOptions(gates="sigma").seeded_shares is False
    assert CompileOptions(gates="fused", seeded_shares=False).seeded_shares is False
    assert CompileOptions(gates="sigma", seeded_shares=True).seeded_shares is True
    g = _graph(True, False)
    assert seeded_parties(g.layout())
    g.seeded_shares = False
    layout = g.layout()
    assert not any(f.share for s in layout.slots for f in s.fields) and not seeded_parties(layout)
    assert party_layout(layout, 0) == layout == party_layout(layout, 1)
