"""Products of secrets and the wires that enter and leave the masked world.

Elementwise multiply and matmul with private weights (DESIGN §5.5):
``Z^ = b * X^ Y^ - X^ [R_Y] - [R_X] Y^ + [R_X R_Y + R_Z]`` (party 1 adds the public
product), then one open of ``Z^``. Input and output gates move values between a party
and the masked wires.
"""
from __future__ import annotations

from fusec.runtime.xp import np

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.gates.base import EvalGen, Gate, GateCost, Key, Open, check_width
from fusec.runtime.rng import DealerRng


class Mul(Gate):
    """Elementwise product of two secret wires (same ring); one round."""

    kind = "mul"
    inputs = 2

    def __init__(self, elements: int, bits: int):
        super().__init__(elements)
        self.bits = check_width(bits, "multiply ring width")

    def fields(self):
        N, n = self.elements, self.bits
        return [("r_x", (N,), n), ("r_y", (N,), n), ("r_xy_z", (N,), n)]

    def keygen(self, rng: DealerRng, in_masks):
        rx, ry = (np.asarray(m, np.uint64).reshape(-1) for m in in_masks)
        n = self.bits
        rz = rng.ring(self.elements, n)
        keys = ({}, {})
        for name, val in (("r_x", rx), ("r_y", ry), ("r_xy_z", (rx * ry + rz) & ring.mask(n))):
            s0, s1 = rng.share(val, n)
            keys[0][name], keys[1][name] = s0, s1
        return rz, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        ux, uy = (u.reshape(-1) for u in inputs)
        m = ring.mask(self.bits)
        share = key["r_xy_z"] - ux * key["r_y"] - key["r_x"] * uy
        if party == 1:
            share = share + ux * uy
        return (yield Open(share & m, self.bits, scope="mul"))

    def cost(self) -> GateCost:
        return GateCost(key_bits=3 * self.bits, aes=0, rounds=1, open_bits=self.bits)


class MatMulPrivate(Gate):
    """Z = X @ W with both X and W secret (private weights, or attention scores).

    X: (..., m, k), W: (..., k, n) with matching batch dims. Key: shares of R_X, R_W and
    R_X @ R_W + R_Z; cost per *output* element is reported with the operand shares
    amortised over it.
    """

    kind = "matmul"
    inputs = 2

    def __init__(self, x_shape: tuple[int, ...], w_shape: tuple[int, ...], bits: int):
        if len(x_shape) < 2 or len(w_shape) < 2 or x_shape[-1] != w_shape[-2] or x_shape[:-2] != w_shape[:-2]:
            raise ParameterError(f"matmul shapes do not match: X {tuple(x_shape)} @ W {tuple(w_shape)}",
                                 "batch dims must be equal and X's last dim must equal W's second-to-last")
        self.x_shape, self.w_shape = tuple(x_shape), tuple(w_shape)
        self.out_shape = self.x_shape[:-1] + (self.w_shape[-1],)
        super().__init__(int(np.prod(self.out_shape)))
        self.bits = check_width(bits, "matmul ring width")

    def fields(self):
        n = self.bits
        return [("r_x", self.x_shape, n), ("r_w", self.w_shape, n), ("r_xw_z", self.out_shape, n)]

    def keygen(self, rng: DealerRng, in_masks):
        rx = np.asarray(in_masks[0], np.uint64).reshape(self.x_shape)
        rw = np.asarray(in_masks[1], np.uint64).reshape(self.w_shape)
        n = self.bits
        rz = rng.ring(self.out_shape, n)
        keys = ({}, {})
        for name, val in (("r_x", rx), ("r_w", rw), ("r_xw_z", (np.matmul(rx, rw) + rz) & ring.mask(n))):
            s0, s1 = rng.share(val, n)
            keys[0][name], keys[1][name] = s0, s1
        return rz.reshape(-1), keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        ux = inputs[0].reshape(self.x_shape)
        uw = inputs[1].reshape(self.w_shape)
        share = key["r_xw_z"] - be.matmul(ux, key["r_w"]) - be.matmul(key["r_x"], uw)
        if party == 1:
            share = share + be.matmul(ux, uw)
        return (yield Open((share & ring.mask(self.bits)).reshape(-1), self.bits, scope="linear"))

    def cost(self) -> GateCost:
        xs, ws, zs = (int(np.prod(s)) for s in (self.x_shape, self.w_shape, self.out_shape))
        key = self.bits * (xs + ws + zs)
        return GateCost(key_bits=-(-key // zs), aes=0, rounds=1, open_bits=self.bits)


class Input(Gate):
    """A private input of ``owner`` enters as ``u = x + r``: the owner's key holds r."""

    kind = "input"
    inputs = 0

    def __init__(self, elements: int, bits: int, owner: int = 1):
        super().__init__(elements)
        self.bits = check_width(bits, "input ring width")
        if owner not in (0, 1):
            raise ParameterError(f"input owner must be party 0 or 1, got {owner}")
        self.owner = owner

    def fields(self):
        return [("mask", (self.elements,), self.bits)]

    def keygen(self, rng: DealerRng, in_masks):
        r = rng.ring(self.elements, self.bits)
        zero = np.zeros_like(r)
        keys = [{"mask": zero}, {"mask": zero}]
        keys[self.owner] = {"mask": r}
        return r, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        if party == self.owner:
            x = inputs[0]
            if x is None or int(np.prod(np.shape(x))) != self.elements:
                raise ParameterError(f"input has {0 if x is None else np.size(x)} elements, the program expects {self.elements}")
            share = (be.input_array(x) + key["mask"]) & ring.mask(self.bits)
        else:
            share = be.xp.zeros(self.elements, dtype=np.uint64)
        return (yield Open(share, self.bits, sender=self.owner, scope="input"))

    def cost(self) -> GateCost:
        return GateCost(key_bits=self.bits, aes=0, rounds=1, open_bits=self.bits)


class Output(Gate):
    """The receiver unmasks: ``x = u - r``. The other party returns None. No round."""

    kind = "output"

    def __init__(self, elements: int, bits: int, receiver: int = 1):
        super().__init__(elements)
        self.bits = check_width(bits, "output ring width")
        self.receiver = receiver

    def fields(self):
        return [("mask", (self.elements,), self.bits)]

    def keygen(self, rng: DealerRng, in_masks):
        r = np.asarray(in_masks[0], np.uint64).reshape(-1)
        keys = [{"mask": np.zeros_like(r)}, {"mask": np.zeros_like(r)}]
        keys[self.receiver] = {"mask": r}
        return r, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        if party != self.receiver:
            return None
        return (inputs[0].reshape(-1) - key["mask"]) & ring.mask(self.bits)
        yield  # pragma: no cover

    def cost(self) -> GateCost:
        return GateCost(key_bits=self.bits, aes=0, rounds=0, open_bits=0)
