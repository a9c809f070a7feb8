"""Table lookup on a tiny domain with a shared truth table: one round, no AES."""
from __future__ import annotations

from fusec.runtime.xp import const, frozen, np

from fusec.errors import ParameterError
from fusec.runtime import ring, truth_table
from fusec.runtime.gates.base import EvalGen, Gate, GateCost, Key, Open, check_width
from fusec.runtime.rng import DealerRng


class TableLookup(Gate):
    """``y = T[x mod 2^k]`` for a public table, on the k-bit view of the input (k <= 8).

    The dealer folds the output mask into the shifted table (``T(u - r) + r_out``), so the
    eval is one gather and one open. Valid when x fits the k-bit view (as LutDpf).
    """

    kind = "table"

    def __init__(self, elements: int, bits: int, table, out_bits: int, view_bits: int):
        super().__init__(elements)
        self.bits = check_width(bits, "table input ring width")
        self.out_bits = check_width(out_bits, "table output width")
        if not 1 <= view_bits <= min(self.bits, truth_table.MAX_TABLE_BITS):
            raise ParameterError(f"table view of {view_bits} bits: must be 1..{min(self.bits, truth_table.MAX_TABLE_BITS)}")
        self.view_bits = view_bits
        t = np.asarray(table)
        if t.shape != (1 << view_bits,):
            raise ParameterError(f"table has shape {t.shape}, a {view_bits}-bit view needs ({1 << view_bits},)")
        self.table = frozen(ring.from_signed(t.astype(np.int64), self.out_bits))

    def fields(self):
        return truth_table.TableKey.field_specs(self.view_bits, self.out_bits, self.elements)

    def keygen(self, rng: DealerRng, in_masks):
        r = np.asarray(in_masks[0], np.uint64).reshape(-1)
        r_out = rng.ring(self.elements, self.out_bits)
        vals = (const(self.table)[None, :] + r_out[:, None]) & ring.mask(self.out_bits)
        k0, k1 = truth_table.keygen(rng, vals, r, self.view_bits, self.out_bits)
        return r_out, {"table": k0.table}, {"table": k1.table}

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        tk = truth_table.TableKey(self.view_bits, self.out_bits, key["table"])
        share = truth_table.eval(party, tk, inputs[0].reshape(-1))
        return (yield Open(share, self.out_bits, scope="lookup"))

    def cost(self) -> GateCost:
        return GateCost(truth_table.TableKey.key_bits(self.view_bits, self.out_bits), 0, 1, self.out_bits)
