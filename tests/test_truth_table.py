"""Shared truth tables and the small-domain table gate, exhaustively."""
import numpy as np
import pytest

from fusec.errors import ParameterError
from fusec.runtime import ring, truth_table
from fusec.runtime.gates.table import TableLookup
from fusec.runtime.rng import DealerRng
from tests.harness import run_gate


@pytest.mark.parametrize("k,w", [(1, 1), (3, 1), (5, 7), (8, 64)])
def test_table_all_inputs_all_masks(k, w):
    rng = DealerRng()
    f = np.random.default_rng(k).integers(0, 2 ** 63, 1 << k, dtype=np.uint64) & ring.mask(w)
    r = np.arange(1 << k, dtype=np.uint64)                 # one element per mask value
    k0, k1 = truth_table.keygen(rng, f, r, k, w)
    x = np.arange(1 << k, dtype=np.uint64)
    u = (x[None, :] + r[:, None]) & ring.mask(k)            # every x for every mask
    got = (truth_table.eval(0, k0, u) + truth_table.eval(1, k1, u)) & ring.mask(w)
    assert np.array_equal(got, np.broadcast_to(f[x], got.shape))


def test_table_gate_signed_view():
    k, n = 6, 37
    table = np.array([v * v - 3 for v in range(-32, 32)])   # index = x mod 64, signed reading
    tab = np.roll(table, -32)                                # entry j holds f(signed(j))
    xs = np.arange(-32, 32)
    for r in (0, 1, 2 ** 36, 2 ** 37 - 1, 12345):
        got, _, logs = run_gate(TableLookup(xs.size, n, tab, n, k), [ring.from_signed(xs, n)], [n],
                                in_masks=[np.full(xs.size, r, np.uint64)])
        assert np.array_equal(ring.to_signed(got, n), xs * xs - 3)
        assert logs[0].rounds == 1


def test_table_bad_input():
    with pytest.raises(ParameterError):
        truth_table.keygen(DealerRng(), np.zeros(512), np.zeros(2), 9, 1)
    with pytest.raises(ParameterError):
        TableLookup(4, 16, np.zeros(8), 16, 4)
