"""Requests and weights are read header-first (``fusec.build_schema``): a pickled object array, an
array claiming more elements than the build takes, an unknown .npy version and a truncated file are
each one FusecError line; plain arrays come back unchanged."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from fusec import build_schema as schema
from fusec.errors import FusecError


def test_plain_npy_and_npz_round_trip(tmp_path):
    a, b = np.arange(6).reshape(2, 3), np.linspace(0, 1, 4, dtype=np.float32)
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "ab.npz", a=a, b=b)
    assert np.array_equal(schema.read_arrays(tmp_path / "a.npy", 6), a)
    got = schema.read_arrays(tmp_path / "ab.npz", 6)
    assert sorted(got) == ["a", "b"] and np.array_equal(got["a"], a) and got["b"].dtype == np.float32


def test_header_helper_reads_shape_and_dtype_only():
    buf = io.BytesIO()
    np.save(buf, np.zeros((3, 5), np.int32))
    buf.seek(0)
    assert schema._npy_header(buf) == ((3, 5), np.dtype(np.int32))
    with pytest.raises(ValueError):
        schema._npy_header(io.BytesIO(b"\x93NUMPY\x09\x00rest"))      # version 9.0


def _bomb(path, shape):
    """A .npy whose header claims ``shape`` but carries no data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("case", ["pickle", "bomb", "version", "truncated", "bomb_in_npz"])
def test_bad_arrays_are_one_line(tmp_path, case):
    p = tmp_path / "x.npy"
    if case == "pickle":
        np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        want = "not a plain numeric|never unpickled"
    elif case == "bomb":
        _bomb(p, (10 ** 5, 10 ** 5))
        want = "more than any input"
    elif case == "version":
        p.write_bytes(b"\x93NUMPY\x09\x00" + b"x" * 100)
        want = "is not a .npy array"
    elif case == "truncated":
        np.save(p, np.arange(100.0))
        p.write_bytes(p.read_bytes()[:-40])
        want = "cannot be read"
    else:
        _bomb(tmp_path / "m.npy", (10 ** 10,))
        p = tmp_path / "x.npz"
        with zipfile.ZipFile(p, "w") as zf:
            zf.write(tmp_path / "m.npy", "m.npy")
        want = "more than any input"
    with pytest.raises(FusecError, match=want) as e:
        schema.read_arrays(p, 1000)
    assert "\n" not in e.value.message


def test_weights_header_checked_against_ir(tmp_path):
    np.savez(tmp_path / "w.npz", w=np.ones((2, 2), np.float32))
    ok = schema.read_weights(tmp_path / "w.npz", {"w": {"shape": [2, 2], "dtype": "float32"}})
    assert ok["w"].shape == (2, 2)
    with pytest.raises(FusecError, match=r"float32\[2, 2\], but ir.json lists float32\[4\]"):
        schema.read_weights(tmp_path / "w.npz", {"w": {"shape": [4], "dtype": "float32"}})
