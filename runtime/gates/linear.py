"""Linear gates: free (no key, no round). The output mask is derived from the input masks.

With public operands a linear map of the public masked inputs is a masked output whose
mask is the same linear map of the input masks (DESIGN §5.1): ``r_z = r_x + r_y`` for an
add, ``c * r`` for a public scalar, ``r_x @ W`` for public weights. Nothing new becomes
public: the output is a function of values both parties already hold.
"""
from __future__ import annotations

import functools

import numpy

from fusec.runtime.xp import const, current, frozen, np

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.gates.base import ZERO_COST, EvalGen, Gate, GateCost, Key, check_width
from fusec.runtime.rng import DealerRng


class _Free(Gate):
    """Base for key-less gates."""

    def fields(self):
        return []

    def cost(self) -> GateCost:
        return ZERO_COST

    def keygen(self, rng: DealerRng, in_masks):
        return self.mask_map(in_masks), {}, {}

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        return self.value_map(inputs, be)
        yield  # pragma: no cover  (makes this a generator)

    def mask_map(self, masks):  # same map on masks and on public values
        return self.value_map(masks, None)

    def value_map(self, vals, be):
        raise NotImplementedError


class Add(_Free):
    """z = x + y (or x - y with ``subtract``) on one ring."""

    kind = "add"
    inputs = 2

    def __init__(self, elements: int, bits: int, subtract: bool = False):
        super().__init__(elements)
        self.bits = check_width(bits, "add ring width")
        self.subtract = subtract

    def value_map(self, vals, be):
        x, y = vals
        return ((x - y) if self.subtract else (x + y)) & ring.mask(self.bits)


class AddPublic(_Free):
    """z = x + c for a public constant c: only the public value moves, the mask stays."""

    kind = "add_public"

    def __init__(self, elements: int, bits: int, const: np.ndarray):
        super().__init__(elements)
        self.bits = check_width(bits, "add ring width")
        self.const = frozen(np.asarray(const, dtype=np.uint64) & ring.mask(self.bits))

    def mask_map(self, masks):
        return masks[0]

    def value_map(self, vals, be):
        c = const(self.const)
        return (vals[0] + c) & ring.mask(self.bits)


class MulPublic(_Free):
    """z = c * x for public integer c (per element or scalar); rescale separately."""

    kind = "mul_public"

    def __init__(self, elements: int, bits: int, scalar):
        super().__init__(elements)
        self.bits = check_width(bits, "scalar-multiply ring width")
        self.scalar = frozen(np.asarray(np.asarray(scalar).astype(np.int64).astype(np.uint64) & ring.mask(self.bits)))

    def value_map(self, vals, be):
        c = const(self.scalar)
        return (vals[0] * c) & ring.mask(self.bits)


class MatMulPublic(_Free):
    """Z = X @ W with public integer weights W (shape k x n), X of shape (..., m, k).

    Free: u_Z = u_X @ W and r_Z = r_X @ W. Products run in uint64 (wrapping mod 2^64
    is exact mod 2^bits). ``elements`` counts output elements.
    """

    kind = "matmul_public"

    def __init__(self, x_shape: tuple[int, ...], weight: np.ndarray, bits: int):
        weight = np.asarray(weight)
        if len(x_shape) < 1 or x_shape[-1] != weight.shape[0]:
            raise ParameterError(f"matmul shapes do not match: X {tuple(x_shape)} @ W {weight.shape}")
        self.x_shape = tuple(x_shape)
        self.out_shape = self.x_shape[:-1] + (weight.shape[1],)
        super().__init__(int(np.prod(self.out_shape)))
        self.bits = check_width(bits, "matmul ring width")
        self.weight = frozen(weight.astype(np.int64).astype(np.uint64) & ring.mask(self.bits))

    @functools.cached_property
    def weight_signed(self) -> numpy.ndarray:
        """The weights as small signed integers (equal mod 2^n), for the host's BLAS products;
        made on first use: a GPU server never needs this second copy (0.9 GB for BERT-base)."""
        return frozen(ring.to_signed(self.weight, self.bits))

    def value_map(self, vals, be):
        x = vals[0].reshape(self.x_shape)
        if be is not None:
            prod = be.matmul_public(x, const(self.weight), self.weight_signed)
        elif current() is numpy:        # the dealer's masks on the host
            prod = ring.matmul_small(x, self.weight_signed)
        else:
            prod = np.matmul(x, const(self.weight))
        return (prod & ring.mask(self.bits)).reshape(-1)   # wires are flat
