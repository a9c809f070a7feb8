"""Keystream layout and key files: round trips and every refusal a user can hit."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fusec.errors import FusecError, KeyFileError, KeyReuseError, ParameterError
from fusec.runtime.keyfile import new_key_set_id, new_pairing_secret
from fusec.runtime.keyio import KeyFile, KeyFileWriter, KeySetReader, read_header
from fusec.runtime.layout import GateSlot, KeyField, KeyLayout, pack_gate_key, unpack_gate_key
from fusec.runtime.ledger import default_state_dir

K = 3
SECRET = new_pairing_secret()


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    """Each test's own server state directory (the reuse ledger), outside the key folder."""
    d = tmp_path / "state"
    monkeypatch.setenv("FUSEC_STATE_DIR", str(d))
    return d


def ledger_dir(state_dir, ksid: bytes, party: int):
    return state_dir / "used" / f"{ksid.hex()}.p{party}"


def make_layout(bits_c: int = 50) -> KeyLayout:
    return KeyLayout(
        [
            ("g0.cmp", "dcf_lt", 5, (
                KeyField("scw", (7, 5, 2), 64),
                KeyField("tcw", (7, 5, 2), 1),
                KeyField("vcw", (7, 5), bits_c),
            )),
            ("g1.lut", "lut", 3, (
                KeyField("table", (3, 4), 2),
                KeyField("corr", (3,), 7),
            )),
            ("g2.empty", "noop", 0, (KeyField("nothing", (0,), 13),)),
            ("g3.mul", "mul", 11, (
                KeyField("rz", (11,), 50),
                KeyField("bit", (11,), 1),
                KeyField("scalar", (), 64),
            )),
        ]
    )


def random_keys(layout: KeyLayout, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    keys = {}
    for s in layout.slots:
        g = {}
        for f in s.fields:
            if f.bits == 64:
                v = rng.integers(0, 2**63, size=f.shape, dtype=np.uint64, endpoint=False) * np.uint64(2) + \
                    rng.integers(0, 2, size=f.shape, dtype=np.uint64)
            else:
                v = rng.integers(0, 2**f.bits, size=f.shape, dtype=np.uint64, endpoint=False)
            g[f.name] = v
        keys[s.gate_id] = g
    return keys


def write_pair(tmp_path, layout, n=K, seed=1, stream_p1=True):
    """Write p0.key (write_set) and p1.key (streaming API); return paths, keys[party][set], ksid."""
    rng = np.random.default_rng(seed)
    ksid = new_key_set_id()
    written = {0: [], 1: []}
    paths = {b: tmp_path / "keys" / f"p{b}.key" for b in (0, 1)}
    for b in (0, 1):
        with KeyFileWriter(paths[b], layout, b, ksid, n, pairing_secret=SECRET) as w:
            for i in range(n):
                keys = random_keys(layout, rng)
                written[b].append(keys)
                if b == 1 and stream_p1:
                    w.begin_set(i)
                    for s in layout.slots:
                        w.write_gate(s.gate_id, keys[s.gate_id])
                    w.end_set()
                else:
                    w.write_set(i, keys)
    return paths, written, ksid


def read_all(reader: KeySetReader, layout: KeyLayout):
    out = {s.gate_id: reader.read_gate(s.gate_id) for s in layout.slots}
    assert reader.remaining_bytes == 0
    reader.finish()
    return out


def assert_keys_equal(got, want):
    assert got.keys() == want.keys()
    for g in want:
        assert got[g].keys() == want[g].keys()
        for name, arr in want[g].items():
            assert got[g][name].dtype == np.uint64
            assert got[g][name].shape == arr.shape
            np.testing.assert_array_equal(got[g][name], arr)


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- layout
def test_layout_offsets_alignment_and_sizes():
    lay = make_layout()
    pos = 0
    for s in lay.slots:
        assert s.offset == pos and s.offset % 8 == 0
        assert s.nbytes == sum(f.nbytes for f in s.fields)
        offs = lay.field_offsets(s.gate_id)
        fpos = s.offset
        for f in s.fields:
            assert offs[f.name] == (fpos, f.nbytes)
            assert fpos % 8 == 0 and f.nbytes % 8 == 0
            assert f.nbytes >= (f.count * f.bits + 7) // 8
            assert f.nbytes - (f.count * f.bits + 7) // 8 < 8
            fpos += f.nbytes
        pos += s.nbytes
    assert lay.set_nbytes == pos
    assert [s.gate_id for s in lay.slots] == ["g0.cmp", "g1.lut", "g2.empty", "g3.mul"]
    assert lay.slot("g1.lut").kind == "lut"
    assert KeyField("x", (), 64).count == 1
    assert KeyField("t", (7, 5, 2), 1).nbytes == 16  # 70 bits -> 9 bytes -> 16
    rows = lay.describe()
    assert [r[0] for r in rows] == lay.gate_ids
    row = rows[0]
    assert row[1:5] == ("dcf_lt", 5, 0, lay.slot("g0.cmp").nbytes)
    assert "tcw[7,5,2]:1b" in row[5] and "vcw[7,5]:50b" in row[5]
    table = lay.format_table()
    assert "g3.mul" in table and str(lay.set_nbytes) in table


def test_layout_json_round_trip_and_digest():
    lay = make_layout()
    s = lay.to_json()
    assert s == make_layout().to_json()  # deterministic
    assert json.loads(s) == json.loads(lay.to_json(indent=2))
    back = KeyLayout.from_json(s)
    assert back.to_json() == s
    assert back.digest() == lay.digest()
    assert back.slots == lay.slots
    assert len(lay.digest()) == 64
    assert lay.digest() == make_layout().digest()
    # any change of a field changes the digest
    assert make_layout(bits_c=49).digest() != lay.digest()
    entries = [(sl.gate_id, sl.kind, sl.elements, sl.fields) for sl in lay.slots]
    renamed = list(entries)
    renamed[1] = ("g1.lut", "lut", 3, (KeyField("table", (3, 4), 2), KeyField("corr2", (3,), 7)))
    assert KeyLayout(renamed).digest() != lay.digest()
    reshaped = list(entries)
    reshaped[1] = ("g1.lut", "lut", 3, (KeyField("table", (4, 3), 2), KeyField("corr", (3,), 7)))
    assert KeyLayout(reshaped).digest() != lay.digest()
    assert KeyLayout(entries[::-1]).digest() != lay.digest()
    # a hand-edited offset is refused
    d = json.loads(s)
    d["slots"][1]["offset"] += 8
    with pytest.raises(ParameterError, match="inconsistent"):
        KeyLayout.from_json(json.dumps(d))
    with pytest.raises(ParameterError, match="not a fusec key layout"):
        KeyLayout.from_json('{"slots": []}')


def test_layout_rejects_bad_parameters():
    f = KeyField("a", (2,), 8)
    with pytest.raises(ParameterError, match="duplicate gate id 'g'"):
        KeyLayout([("g", "k", 2, (f,)), ("g", "k", 2, (f,))])
    for bits in (0, 65, -1):
        with pytest.raises(ParameterError, match="between 1 and 64"):
            KeyField("a", (2,), bits)
    with pytest.raises(ParameterError, match="negative"):
        KeyField("a", (2, -1), 8)
    with pytest.raises(ParameterError, match="duplicate key field"):
        KeyLayout([("g", "k", 2, (f, KeyField("a", (3,), 4)))])
    with pytest.raises(ParameterError):
        KeyLayout([("g", "k", -1, (f,))])
    assert isinstance(ParameterError("x"), FusecError)


# --------------------------------------------------------------------------- pack/unpack
def test_pack_unpack_gate_round_trip():
    lay = make_layout()
    keys = random_keys(lay, np.random.default_rng(5))
    for s in lay.slots:
        buf = pack_gate_key(s, keys[s.gate_id])
        assert isinstance(buf, bytes) and len(buf) == s.nbytes
        got = unpack_gate_key(s, buf)
        for name, arr in keys[s.gate_id].items():
            np.testing.assert_array_equal(got[name], arr)
            assert got[name].shape == arr.shape
    # widths at the extremes with all-ones values
    s = GateSlot("x", "k", 9, (KeyField("w1", (9,), 1), KeyField("w7", (9,), 7), KeyField("w64", (9,), 64)))
    arrays = {"w1": np.ones(9, np.uint64), "w7": np.full(9, 127, np.uint64), "w64": np.full(9, 2**64 - 1, np.uint64)}
    got = unpack_gate_key(s, pack_gate_key(s, arrays))
    for n, a in arrays.items():
        np.testing.assert_array_equal(got[n], a)
    # bool and small unsigned / non-negative signed dtypes are accepted
    got = unpack_gate_key(s, pack_gate_key(s, {"w1": arrays["w1"].astype(bool), "w7": np.arange(9, dtype=np.int16), "w64": arrays["w64"]}))
    np.testing.assert_array_equal(got["w7"], np.arange(9))


def test_pack_rejects_malformed_gate_keys():
    lay = make_layout()
    s = lay.slot("g1.lut")
    good = random_keys(lay, np.random.default_rng(0))["g1.lut"]
    with pytest.raises(KeyFileError, match=r"g1\.lut.*missing field.*'corr'"):
        pack_gate_key(s, {"table": good["table"]})
    with pytest.raises(KeyFileError, match=r"g1\.lut.*unexpected field.*'bogus'"):
        pack_gate_key(s, {**good, "bogus": good["corr"]})
    with pytest.raises(KeyFileError, match=r"g1\.lut.*'table'.*shape \(4, 3\).*\(3, 4\)"):
        pack_gate_key(s, {**good, "table": good["table"].reshape(4, 3)})
    wide = good["corr"].copy()
    wide[2] = 128  # 8 bits in a 7-bit field
    with pytest.raises(KeyFileError, match=r"g1\.lut.*'corr'.*128.*7 bits"):
        pack_gate_key(s, {**good, "corr": wide})
    with pytest.raises(KeyFileError, match=r"'corr'.*negative"):
        pack_gate_key(s, {**good, "corr": np.array([1, -1, 2])})
    with pytest.raises(KeyFileError, match=r"'corr'.*dtype"):
        pack_gate_key(s, {**good, "corr": np.array([1.0, 2.0, 3.0])})
    with pytest.raises(KeyFileError, match="holds 3 bytes"):
        unpack_gate_key(s, b"abc")


# --------------------------------------------------------------------------- files
def test_key_file_round_trip_both_parties(tmp_path):
    lay = make_layout()
    paths, written, ksid = write_pair(tmp_path, lay)
    for b in (0, 1):
        with KeyFile.open(paths[b], lay, b) as kf:
            assert kf.party == b
            assert kf.count == K
            assert kf.key_set_id == ksid.hex()
            assert kf.layout is lay
            assert kf.used_sets() == []
            kf.verify_all()
            for i in range(K):
                assert kf.next_unused() == i
                reader = kf.claim(kf.next_unused())
                assert reader.index == i
                assert reader.remaining_bytes == lay.set_nbytes
                assert_keys_equal(read_all(reader, lay), written[b][i])
            assert kf.next_unused() is None
            assert kf.used_sets() == list(range(K))
    h0, h1 = read_header(paths[0]), read_header(paths[1])
    assert h0.key_set_id == h1.key_set_id == ksid.hex()
    assert (h0.party, h1.party) == (0, 1)
    assert h0.file_nbytes == paths[0].stat().st_size
    # the two parties' keys differ (independent random arrays were written)
    assert paths[0].read_bytes()[h0.data_offset:] != paths[1].read_bytes()[h1.data_offset:]


def test_claim_out_of_order_and_raw_reads(tmp_path):
    lay = make_layout()
    paths, written, _ = write_pair(tmp_path, lay)
    kf = KeyFile.open(paths[0], lay, 0)
    r = kf.claim(2)
    raw = r.read_gate_raw("g0.cmp")
    assert raw.nbytes == lay.slot("g0.cmp").nbytes and not raw.flags.writeable
    np.testing.assert_array_equal(unpack_gate_key(lay.slot("g0.cmp"), raw)["scw"], written[0][2]["g0.cmp"]["scw"])
    for g in lay.gate_ids[1:]:
        got = r.read_gate(g)
        for n, a in written[0][2][g].items():
            np.testing.assert_array_equal(got[n], a)
    r.finish()
    assert kf.next_unused() == 0
    with kf.claim(0) as r0:
        assert_keys_equal({g: r0.read_gate(g) for g in lay.gate_ids}, written[0][0])
    kf.close()


def test_missing_and_foreign_files(tmp_path):
    lay = make_layout()
    missing = tmp_path / "nope" / "p0.key"
    with pytest.raises(KeyFileError, match="does not exist") as e:
        KeyFile.open(missing, lay, 0)
    assert str(missing) in str(e.value) and "fusec keygen" in str(e.value)
    junk = tmp_path / "junk.key"
    junk.write_bytes(os.urandom(500))
    with pytest.raises(KeyFileError, match="not a fusec key file"):
        KeyFile.open(junk, lay, 0)
    empty = tmp_path / "empty.key"
    empty.write_bytes(b"")
    with pytest.raises(KeyFileError, match="not a fusec key file"):
        KeyFile.open(empty, lay, 0)


def test_other_party_file(tmp_path):
    lay = make_layout()
    paths, _, _ = write_pair(tmp_path, lay, n=1)
    with pytest.raises(KeyFileError, match="party 1's key file but you are running as party 0") as e:
        KeyFile.open(paths[1], lay, 0)
    assert "p0.key" in str(e.value)
    with pytest.raises(KeyFileError, match="party 0's key file but you are running as party 1"):
        KeyFile.open(paths[0], lay, 1)
    with pytest.raises(ParameterError):
        KeyFile.open(paths[0], lay, 2)


def test_other_layout(tmp_path):
    lay = make_layout()
    paths, _, _ = write_pair(tmp_path, lay, n=1)
    other = make_layout(bits_c=51)
    with pytest.raises(KeyFileError, match="another build/layout") as e:
        KeyFile.open(paths[0], other, 0)
    assert "re-run fusec keygen" in str(e.value)


def test_truncated_and_extended_file(tmp_path):
    lay = make_layout()
    paths, _, _ = write_pair(tmp_path, lay)
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[:-5])
    with pytest.raises(KeyFileError, match="truncated"):
        KeyFile.open(paths[0], lay, 0)
    paths[0].write_bytes(data[:100])  # cut inside the header
    with pytest.raises(KeyFileError, match="truncated"):
        KeyFile.open(paths[0], lay, 0)
    paths[0].write_bytes(data[:40])  # cut inside the fixed header fields
    with pytest.raises(KeyFileError, match="truncated"):
        KeyFile.open(paths[0], lay, 0)
    paths[0].write_bytes(data + b"\0")
    with pytest.raises(KeyFileError, match="trailing bytes"):
        KeyFile.open(paths[0], lay, 0)


def test_corrupted_set_detected_only_when_claimed(tmp_path):
    lay = make_layout()
    paths, written, _ = write_pair(tmp_path, lay)
    h = read_header(paths[0])
    flip_byte(paths[0], h.set_offset(1) + lay.slot("g3.mul").offset + 3)
    kf = KeyFile.open(paths[0], lay, 0)  # opening does not read the sets
    assert_keys_equal(read_all(kf.claim(0), lay), written[0][0])
    with pytest.raises(KeyFileError, match="key set 1 of .* is corrupted"):
        kf.claim(1)
    with pytest.raises(KeyFileError, match="key set 1 .*corrupted"):
        kf.verify_set(1)
    kf.verify_set(2)
    assert_keys_equal(read_all(kf.claim(2), lay), written[0][2])
    assert kf.used_sets() == [0, 2]  # the corrupted set was not recorded as used


@pytest.mark.parametrize("where", ["party", "digest", "ksid", "secret", "count", "setbytes", "setsum", "headsum",
                                   "padding"])
def test_corrupted_header(tmp_path, where):
    lay = make_layout()
    paths, _, _ = write_pair(tmp_path, lay)
    # offsets from the format table in runtime/keyfile.py's docstring
    offset = {"party": 10, "digest": 20, "ksid": 50, "secret": 70, "count": 91, "setbytes": 96,
              "setsum": 103 + 32 + 5, "headsum": 103 + 32 * K + 1, "padding": 103 + 32 * K + 40}[where]
    flip_byte(paths[0], offset)
    with pytest.raises(KeyFileError, match="corrupted"):
        KeyFile.open(paths[0], lay, 0)


def test_bad_magic_and_version(tmp_path):
    lay = make_layout()
    paths, _, _ = write_pair(tmp_path, lay, n=1)
    data = paths[0].read_bytes()
    flip_byte(paths[0], 0)
    with pytest.raises(KeyFileError, match="not a fusec key file"):
        KeyFile.open(paths[0], lay, 0)
    paths[0].write_bytes(data[:8] + (7).to_bytes(2, "little") + data[10:])
    with pytest.raises(KeyFileError, match="format version 7"):
        KeyFile.open(paths[0], lay, 0)


def test_reuse_refused_across_objects(tmp_path, state_dir):
    lay = make_layout()
    paths, written, ksid = write_pair(tmp_path, lay)
    kf = KeyFile.open(paths[0], lay, 0)
    r = kf.claim(0)
    # mark-then-use: the record is in the state directory before any key is read
    assert sorted(p.name for p in ledger_dir(state_dir, ksid, 0).iterdir()) == ["0"]
    assert json.loads((ledger_dir(state_dir, ksid, 0) / "0").read_text())["key_file"] == str(paths[0])
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["p0.key", "p1.key"]  # nothing beside the file
    with pytest.raises(KeyReuseError, match="key set 0 of .* was already used") as e:
        kf.claim(0)
    assert "difference of two inputs" in str(e.value) and "fusec keygen" in str(e.value)
    read_all(r, lay)
    kf.close()
    kf2 = KeyFile.open(paths[0], lay, 0)
    with pytest.raises(KeyReuseError):
        kf2.claim(0)
    assert kf2.next_unused() == 1
    # the other party's record is separate
    kf1 = KeyFile.open(paths[1], lay, 1)
    assert kf1.next_unused() == 0
    assert_keys_equal(read_all(kf1.claim(0), lay), written[1][0])
    # exhausting the file
    kf2.claim(1)
    kf2.claim(2)
    assert kf2.next_unused() is None
    with pytest.raises(KeyFileError, match="all 3 key sets .* used") as e:
        kf2.claim(3)
    assert "fusec keygen --count" in str(e.value)
    assert not isinstance(e.value, KeyReuseError)


def test_tampered_used_record_is_refused(tmp_path, state_dir):
    lay = make_layout()
    paths, _, ksid = write_pair(tmp_path, lay, n=2)
    kf = KeyFile.open(paths[0], lay, 0)
    kf.claim(0)
    for junk in ("notes.txt", "2", "01"):       # not a set index of this file (2 sets: 0..1)
        (ledger_dir(state_dir, ksid, 0) / junk).write_text("")
        with pytest.raises(KeyFileError, match="refusing to guess"):
            kf.claim(1)
        with pytest.raises(KeyFileError, match="refusing to guess"):
            kf.next_unused()
        (ledger_dir(state_dir, ksid, 0) / junk).unlink()
    kf.claim(1)


def test_fresh_keygen_at_same_path_resets_record(tmp_path):
    lay = make_layout()
    paths, _, _ = write_pair(tmp_path, lay, n=2, seed=1)
    kf = KeyFile.open(paths[0], lay, 0)
    kf.claim(0)
    kf.close()
    paths, written, _ = write_pair(tmp_path, lay, n=2, seed=2)  # new key-set id
    kf = KeyFile.open(paths[0], lay, 0)
    assert kf.next_unused() == 0
    assert_keys_equal(read_all(kf.claim(0), lay), written[0][0])


def test_reader_order_and_finish(tmp_path):
    lay = make_layout()
    paths, _, _ = write_pair(tmp_path, lay)
    kf = KeyFile.open(paths[0], lay, 0)
    r = kf.claim(0)
    with pytest.raises(KeyFileError, match=r"expected gate 'g0\.cmp'.*got 'g1\.lut'"):
        r.read_gate("g1.lut")
    r.read_gate("g0.cmp")
    assert r.remaining_bytes == lay.set_nbytes - lay.slot("g0.cmp").nbytes
    with pytest.raises(KeyFileError, match=rf"consumed {lay.slot('g0.cmp').nbytes} of {lay.set_nbytes} bytes: program and layout disagree"):
        r.finish()
    for g in lay.gate_ids[1:]:
        r.read_gate(g)
    with pytest.raises(KeyFileError, match="already read"):
        r.read_gate("g0.cmp")
    r.finish()
    with pytest.raises(KeyFileError, match="finished"):
        r.read_gate("g0.cmp")


def test_writer_rejects_bad_input_and_leaves_no_file(tmp_path):
    lay = make_layout()
    keys = random_keys(lay, np.random.default_rng(3))
    path = tmp_path / "p0.key"
    ksid = new_key_set_id()
    # value too wide for its field at write time
    bad = {g: dict(a) for g, a in keys.items()}
    bad["g3.mul"]["rz"] = bad["g3.mul"]["rz"].copy()
    bad["g3.mul"]["rz"][4] = np.uint64(1) << np.uint64(50)
    with pytest.raises(KeyFileError, match=r"g3\.mul.*'rz'.*does not fit in 50 bits"):
        with KeyFileWriter(path, lay, 0, ksid, 1, pairing_secret=SECRET) as w:
            w.write_set(0, bad)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # temp file removed
    # gates out of order in the streaming API
    w = KeyFileWriter(path, lay, 0, ksid, 2, pairing_secret=SECRET)
    w.begin_set(0)
    with pytest.raises(KeyFileError, match=r"expected gate 'g0\.cmp'.*got 'g1\.lut'"):
        w.write_gate("g1.lut", keys["g1.lut"])
    w.write_gate("g0.cmp", keys["g0.cmp"])
    with pytest.raises(KeyFileError, match="incomplete"):
        w.end_set()
    # missing gates in write_set
    with pytest.raises(KeyFileError, match=r"missing keys for gate\(s\) \['g2\.empty'\]"):
        w.write_set(1, {g: a for g, a in keys.items() if g != "g2.empty"})
    # closing before all sets are written: refused, nothing left behind
    with pytest.raises(KeyFileError):
        w.close()
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []
    # sets in any order, each once
    with KeyFileWriter(path, lay, 1, ksid, 2, pairing_secret=SECRET) as w:
        w.write_set(1, keys)
        with pytest.raises(KeyFileError, match="already written"):
            w.write_set(1, keys)
        w.write_set(0, keys)
        assert not path.exists()  # nothing looks complete before close()
    kf = KeyFile.open(path, lay, 1)
    assert_keys_equal(read_all(kf.claim(1), lay), keys)
    # parameter checks
    with pytest.raises(ParameterError):
        KeyFileWriter(tmp_path / "x.key", lay, 0, b"short", 1, pairing_secret=SECRET)
    with pytest.raises(ParameterError):
        KeyFileWriter(tmp_path / "x.key", lay, 0, ksid, 0, pairing_secret=SECRET)
    with pytest.raises(ParameterError, match="pairing secret"):
        KeyFileWriter(tmp_path / "x.key", lay, 0, ksid, 1, pairing_secret=b"short")


def test_set_checksum_is_chunked_blake3_and_catches_every_chunk(tmp_path, monkeypatch):
    """With tiny chunks a set spans many: the header's set checksum equals BLAKE3 over the
    chunks' BLAKE3 digests (computed here on the file's bytes), and a flipped byte in any
    chunk, or a file cut inside a set, is refused."""
    from blake3 import blake3

    import fusec.runtime.keyfile as keyfile

    monkeypatch.setattr(keyfile, "CHUNK_BYTES", 64)
    lay = make_layout()
    paths, written, _ = write_pair(tmp_path, lay)
    h = read_header(paths[0])
    data = paths[0].read_bytes()
    n = lay.set_nbytes
    assert n > 3 * 64
    for i in range(K):
        set_bytes = data[h.set_offset(i):h.set_offset(i) + n]
        digests = b"".join(blake3(set_bytes[s:s + 64]).digest() for s in range(0, n, 64))
        assert h.set_checksums[i] == blake3(digests).digest()
    kf = KeyFile.open(paths[0], lay, 0)
    kf.verify_set(0)
    assert_keys_equal(read_all(kf.claim(0), lay), written[0][0])  # claim reuses the verified bytes
    kf.close()
    for where in (1, 64, n - 1):  # first, second and last chunk of set 2
        p = tmp_path / f"flip{where}.key"
        p.write_bytes(data)
        flip_byte(p, h.set_offset(2) + where)
        with pytest.raises(KeyFileError, match="key set 2 .*corrupted"):
            KeyFile.open(p, lay, 0).verify_set(2)


def test_claim_rereads_a_set_it_did_not_just_verify(tmp_path):
    lay = make_layout()
    paths, written, _ = write_pair(tmp_path, lay)
    kf = KeyFile.open(paths[1], lay, 1)
    kf.verify_set(1)
    assert_keys_equal(read_all(kf.claim(0), lay), written[1][0])
    assert_keys_equal(read_all(kf.claim(1), lay), written[1][1])


def test_claim_reads_into_a_reused_buffer_and_still_checks_it(tmp_path):
    """The GPU reads every set into one page-locked buffer: the reader's bytes are that
    buffer's, the keys are right, a corrupted set in it is still refused, and the buffer
    is asked for only when the set must be read (not for the set verified just before)."""
    lay = make_layout()
    paths, written, _ = write_pair(tmp_path, lay)
    h = read_header(paths[0])
    flip_byte(paths[0], h.set_offset(2) + lay.slot("g3.mul").offset + 1)
    kf = KeyFile.open(paths[0], lay, 0)
    buf = np.full(kf.set_nbytes + 100, 0xA5, np.uint8)
    asked = []

    def out(n):
        asked.append(n)
        return buf

    kf.verify_set(0)
    raw = kf.claim(0, out).read_all_raw()
    assert asked == [] and not np.shares_memory(raw, buf)       # the verified copy, no new buffer
    for i in (0, 1):
        raw = kf.claim(1, out).read_all_raw() if i else raw
        if i:
            assert asked == [kf.set_nbytes] and np.shares_memory(raw, buf)
        assert_keys_equal({s.gate_id: unpack_gate_key(s, raw[s.offset:s.offset + s.nbytes]) for s in lay.slots},
                          written[0][i])
    with pytest.raises(KeyFileError, match="key set 2 of .* is corrupted"):
        kf.claim(2, out)
    kf.close()


def test_a_set_cut_short_after_opening_is_refused_and_not_marked(tmp_path, monkeypatch):
    """Opening checks the size; a file cut while open (a copy over it, a full disk) is
    read by several threads at once, each chunk in small pieces: the claim names the
    set and the byte where it ends, marks nothing, and the sets before the cut still load."""
    import fusec.runtime.keyfile as keyfile
    import fusec.runtime.keyio as keyio

    monkeypatch.setattr(keyfile, "CHUNK_BYTES", 64)
    monkeypatch.setattr(keyio, "_PIECE_BYTES", 24)        # pieces that do not divide a chunk
    lay = make_layout()
    paths, written, _ = write_pair(tmp_path, lay)
    h = read_header(paths[0])
    kf = KeyFile.open(paths[0], lay, 0)
    cut = h.set_offset(1) + 3 * 64 + 10                    # inside set 1's fourth chunk
    os.truncate(paths[0], cut)
    with pytest.raises(KeyFileError, match=rf"truncated: key set 1 ends after {3 * 64 + 10} of {lay.set_nbytes} "):
        kf.claim(1)
    with pytest.raises(KeyFileError, match="key set 2 ends after 0 of"):
        kf.claim(2, lambda n: np.zeros(n, np.uint8))
    assert kf.used_sets() == []
    assert_keys_equal(read_all(kf.claim(0), lay), written[0][0])
    assert kf.used_sets() == [0]


def test_a_verified_set_overwritten_in_a_shared_buffer_is_read_again(tmp_path):
    """Two key files verified into one reused buffer (e.g. the GPU's page-locked one):
    the second read replaces the first file's bytes, so the first file's claim must read
    its set again rather than hand out the other file's bytes as verified."""
    lay = make_layout()
    a, wa, _ = write_pair(tmp_path / "a", lay)
    b, wb, _ = write_pair(tmp_path / "b", lay)
    buf = np.zeros(lay.set_nbytes, np.uint8)
    asked = []

    def out(n):
        asked.append(n)
        return buf

    ka, kb = KeyFile.open(a[0], lay, 0), KeyFile.open(b[0], lay, 0)
    ka.verify_set(0, out)
    kb.verify_set(0, out)                                  # buf now holds b's set 0
    assert_keys_equal(read_all(kb.claim(0, out), lay), wb[0][0])
    assert len(asked) == 2                                 # b's claim used its verified bytes
    ka_reader = ka.claim(0, out)
    assert len(asked) == 3                                 # a's were gone: read again
    assert_keys_equal(read_all(ka_reader, lay), wa[0][0])
    ka.verify_set(1, out)                                  # nothing else wrote buf: no second read
    assert_keys_equal(read_all(ka.claim(1, out), lay), wa[0][1])
    assert len(asked) == 4


def test_io_threads_follow_the_environment_and_a_bad_value_is_one_clear_error(tmp_path, monkeypatch):
    import fusec.runtime.keyio as keyio

    lay = make_layout()
    paths, written, _ = write_pair(tmp_path, lay)
    kf = KeyFile.open(paths[0], lay, 0)
    monkeypatch.setattr(keyio, "_POOL", None)       # both restored after the test
    monkeypatch.setattr(keyio, "_POOL_THREADS", keyio._POOL_THREADS)
    for bad in ("0", "many", "-3", "1e3"):
        monkeypatch.setenv("FUSEC_IO_THREADS", bad)
        with pytest.raises(ParameterError, match=f"FUSEC_IO_THREADS='{bad}' is not a thread count"):
            kf.claim(0)
    assert kf.used_sets() == []
    monkeypatch.setenv("FUSEC_IO_THREADS", "3")
    try:
        assert_keys_equal(read_all(kf.claim(0), lay), written[0][0])
        assert keyio._POOL_THREADS == 3 and keyio._POOL._max_workers == 3
    finally:
        if keyio._POOL is not None:
            keyio._POOL.shutdown()


def test_checksums_are_blake3_for_every_length_and_split():
    """The format's hash is BLAKE3-256: the published digests of "" and "abc", and the same
    digest however the bytes reach the incremental hasher (keyio feeds chunks in parts)."""
    import fusec.runtime.keyfile as keyfile

    assert keyfile.checksum(b"").hex() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert keyfile.checksum(b"abc").hex() == "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
    rng = np.random.default_rng(5)
    for n in (0, 1, 63, 64, 65, 1023, 1024, 1025, 4097, 1 << 20):
        data = rng.bytes(n)
        want = keyfile.checksum(data)
        h = keyfile.hasher()
        h.update(data[: n // 3])
        h.update(memoryview(np.frombuffer(data, np.uint8))[n // 3:])
        assert h.digest() == want


# --------------------------------------------------------------------------- the reuse ledger
def test_a_copied_key_file_is_the_same_key_set(tmp_path):
    """Copying (or renaming) a key file does not make its used sets fresh again: the
    ledger is keyed by the dealer's key-set id, not by the path."""
    import shutil

    lay = make_layout()
    paths, written, _ = write_pair(tmp_path, lay, n=2)
    KeyFile.open(paths[0], lay, 0).claim(0)
    copy = tmp_path / "elsewhere" / "renamed.key"
    copy.parent.mkdir()
    shutil.copy(paths[0], copy)
    kf = KeyFile.open(copy, lay, 0)
    assert kf.used_sets() == [0] and kf.next_unused() == 1
    with pytest.raises(KeyReuseError, match="already used"):
        kf.claim(0)
    paths[0].unlink()                                 # the original gone: still refused
    for leftover in tmp_path.rglob("*.used"):         # nothing a user could delete beside it
        leftover.unlink()
    with pytest.raises(KeyReuseError):
        KeyFile.open(copy, lay, 0).claim(0)
    assert_keys_equal(read_all(kf.claim(1), lay), written[0][1])


def test_state_dir_follows_the_environment_and_the_argument(tmp_path, monkeypatch):
    lay = make_layout()
    paths, _, ksid = write_pair(tmp_path, lay, n=2)
    monkeypatch.delenv("FUSEC_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "fusec"
    KeyFile.open(paths[0], lay, 0).claim(0)
    assert (tmp_path / "xdg" / "fusec" / "used" / f"{ksid.hex()}.p0" / "0").exists()
    kf = KeyFile.open(paths[0], lay, 0, state_dir=tmp_path / "other")      # explicit: another record
    assert kf.next_unused() == 0 and kf.ledger.path.parent.parent == tmp_path / "other"


def test_unusable_state_dir_is_a_clear_error(tmp_path, monkeypatch):
    lay = make_layout()
    paths, _, _ = write_pair(tmp_path, lay, n=1)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    kf = KeyFile.open(paths[0], lay, 0, state_dir=blocker / "state")
    with pytest.raises(KeyFileError, match="cannot keep the record of used key sets") as e:
        kf.ledger.ensure()
    assert "--state-dir" in str(e.value)
    with pytest.raises(KeyFileError, match="cannot keep the record"):
        kf.claim(0)


def test_concurrent_claims_of_one_set_only_one_wins(tmp_path):
    """Two servers with copies of one file claim the same set at once: O_EXCL lets one."""
    import threading

    lay = make_layout()
    paths, _, _ = write_pair(tmp_path, lay, n=1)
    files = [KeyFile.open(paths[0], lay, 0) for _ in range(8)]
    start, won, lost = threading.Barrier(len(files)), [], []

    def go(kf):
        start.wait()
        try:
            kf.claim(0)
            won.append(kf)
        except KeyReuseError:
            lost.append(kf)

    ts = [threading.Thread(target=go, args=(kf,)) for kf in files]
    [t.start() for t in ts]
    [t.join(30) for t in ts]
    assert len(won) == 1 and len(lost) == len(files) - 1


# --------------------------------------------------------------------------- what a key path may be
def test_key_path_fifo_device_and_symlink_loop_refused_without_blocking(tmp_path):
    lay = make_layout()
    fifo = tmp_path / "p0.key"
    os.mkfifo(fifo)                      # opening it for reading would wait for a writer forever
    with pytest.raises(KeyFileError, match="is a FIFO, not a regular file"):
        KeyFile.open(fifo, lay, 0)
    with pytest.raises(KeyFileError, match="is a FIFO"):
        read_header(fifo)
    with pytest.raises(KeyFileError, match="is a device, not a regular file"):
        KeyFile.open("/dev/zero", lay, 0)
    a, b = tmp_path / "a.key", tmp_path / "b.key"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(KeyFileError, match="symbolic link loop"):
        KeyFile.open(a, lay, 0)
    with pytest.raises(KeyFileError, match="is a directory"):
        KeyFile.open(tmp_path, lay, 0)
    # a symlink to a real key file is fine
    paths, _, _ = write_pair(tmp_path, lay, n=1)
    link = tmp_path / "link.key"
    link.symlink_to(paths[0])
    assert KeyFile.open(link, lay, 0).count == 1


def test_pairing_secret_is_in_both_files_and_not_in_repr(tmp_path):
    lay = make_layout()
    paths, _, _ = write_pair(tmp_path, lay, n=1)
    h0, h1 = read_header(paths[0]), read_header(paths[1])
    assert h0.pairing_secret == h1.pairing_secret == SECRET
    assert SECRET.hex() not in repr(h0) and str(SECRET) not in repr(h0)
    assert KeyFile.open(paths[1], lay, 1).pairing_secret == SECRET
