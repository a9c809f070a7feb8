"""The max tree's one-round ReLU from the sign bit (runtime/gates/sign_relu.py) against numpy's
max(x, 0), next to its two-round form (ReLU2, the max tree's packed levels).

Every x of its domain (|x| < 2^(n-1)) under forced masks (0, all ones, the sign bit alone, the
low bits alone) and random ones; its cost measured from the real keys, the AES counter and the
bytes sent.
"""
from __future__ import annotations

import numpy as np
import pytest

from fusec.errors import ParameterError
from fusec.runtime.gates.compare import ReLU2
from fusec.runtime.gates.sign_relu import SignReLU
from fusec.runtime.rng import DealerRng
from tests.test_narrow_gates import measure, run_signed


def _masks(n: int, E: int, seed: bytes) -> list[np.ndarray]:
    top = (1 << n) - 1
    fixed = [0, top, 1 << (n - 1), (1 << (n - 1)) - 1, 1]
    out = [np.full(E, v, np.uint64) for v in fixed]
    out.append(DealerRng(seed).ring(E, n))
    return out


RELUS = {"one round": SignReLU, "two rounds": ReLU2}


@pytest.mark.parametrize("kind", RELUS)
@pytest.mark.parametrize("n", [2, 3, 8, 12])
def test_every_x_under_forced_and_random_masks(n, kind):
    xs = np.arange(-(1 << (n - 1)) + 1, 1 << (n - 1), dtype=np.int64)
    for r in _masks(n, len(xs), b"sign-relu-%d" % n):
        got, _, logs = run_signed(RELUS[kind](len(xs), n), xs, masks=r)
        np.testing.assert_array_equal(np.asarray(got, np.int64), np.maximum(xs, 0))
        assert all(lg.rounds == (1 if kind == "one round" else 2) for lg in logs)


@pytest.mark.parametrize("kind", RELUS)
@pytest.mark.parametrize("n", [20, 37, 50, 64])
def test_wide_rings_and_the_cost_is_measured(n, kind):
    g = np.random.default_rng(n)
    xs = g.integers(-(1 << (n - 1)) + 1, 1 << (n - 1), 3000, dtype=np.int64) if n < 64 else \
        g.integers(-(1 << 62), 1 << 62, 3000, dtype=np.int64)
    xs[:4] = [0, -1, 1, (1 << (n - 2)) if n < 64 else 1 << 61]
    gate = RELUS[kind](len(xs), n)
    got, cost, _ = measure(gate, xs)
    np.testing.assert_array_equal(np.asarray(got, object), np.maximum(xs, 0).astype(object))
    assert cost == gate.cost()


def test_half_the_aes_of_the_two_point_relu():
    """The scalar gate on the exact ReLU spec walks two points on n bits; this walks one on n - 1."""
    from fusec.ir.spec import relu_spec
    from fusec.runtime.gates.scalar import ScalarGate

    for lookup, kind in (("shifted", "one round"), ("packed", "two rounds")):
        old, new = ScalarGate(1, relu_spec(20, 0), lookup=lookup).cost(), RELUS[kind](1, 20).cost()
        assert new.aes * 2 <= old.aes and new.rounds == old.rounds


def test_bad_parameters():
    with pytest.raises(ParameterError, match="at least 2 bits"):
        SignReLU(4, 1)
