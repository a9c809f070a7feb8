"""The keystream layout: which bytes of a key set belong to which gate instance.

The compiler (not the runtime) fixes the order in which gate keys are consumed (DESIGN §6).
A :class:`KeyLayout` is that order made concrete: an ordered list of :class:`GateSlot`\\ s,
each owning a contiguous byte range of one *key set* (the keys of one inference). Inside
a slot the gate's key material is stored structure-of-arrays: one :class:`KeyField` after
another, in the order the gate declared them, each a dense little-endian bit-packed array
(:func:`fusec.runtime.ring.pack_bits`) padded to a multiple of 8 bytes so that every
field (and so every slot) starts 8-byte aligned — GPU loads of a field coalesce and a
64-bit field can be viewed in place as ``uint64``.

The dealer writes and both servers read through the same layout, so a key set has the
same number of bytes for P0 and P1 (``set_nbytes``); only the contents differ.
``to_json`` is canonical (sorted keys, fixed separators) and ``digest`` — the sha256 of it,
the *layout hash* — is written into every key file so that keys of another build are
refused before anything is evaluated.

An ``insecure`` layout belongs to a ``--insecure-mask-dependent-shapes`` build (the padding
ablation): its JSON carries ``"insecure_mask_dependent_shapes": true`` (absent otherwise,
so a padded build's layout, digest and key files are those of a build without the flag),
so its digest differs from the padded build's and neither build accepts the other's keys.
Mask-dependent fields are reserved at their padded maximum (``set_nbytes`` stays fixed);
each set records how much of them it uses inside the gate's own slot (covered by the set
checksum), see :class:`fusec.runtime.gates.scalar.SplineLookup`.

This module is data only: no cryptography, no files. :func:`pack_gate_key` and
:func:`unpack_gate_key` convert between one gate's arrays and its packed slot bytes, and
reject malformed dealer output (missing or extra fields, wrong shapes, values wider than
the field) with a :class:`~fusec.errors.KeyFileError` naming the gate and the field.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field as _dc_field
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from fusec.errors import KeyFileError, ParameterError
from fusec.runtime.ring import mask, pack_bits, packed_size, unpack_bits

__all__ = [
    "ALIGN",
    "LAYOUT_FORMAT",
    "INSECURE_KEY",
    "KeyField",
    "GateSlot",
    "KeyLayout",
    "pack_gate_key",
    "unpack_gate_key",
]

#: Every field (and therefore every slot) starts at a multiple of this many bytes.
ALIGN = 8
#: Format tag stored in the layout JSON (part of the digest).
LAYOUT_FORMAT = "fusec.keylayout/1"

#: Layout JSON key marking an INSECURE (unpadded, mask-dependent shapes) build; absent when padded.
INSECURE_KEY = "insecure_mask_dependent_shapes"

DESCRIBE_COLUMNS = ("gate", "kind", "elements", "offset", "bytes", "fields")


def _round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


# --------------------------------------------------------------------------- fields
@dataclass(frozen=True)
class KeyField:
    """One array of a gate's key: ``shape`` entries of ``bits`` bits each (uint64 values).

    ``shape`` is the full array shape of the field for the gate instance, e.g.
    ``(levels, elements, 2)``; ``()`` is a single value. ``share``: the two parties' values
    are additive shares mod 2^bits of one value, only whose sum the gate uses, so the
    dealer may derive one party's from a seed (runtime/seeded_shares.py); in the JSON only
    when true, so a layout without such fields keeps its digest.
    """

    name: str
    shape: tuple[int, ...]
    bits: int
    share: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ParameterError(f"key field name must be a non-empty string, got {self.name!r}")
        try:
            shape = tuple(self.shape) if not _is_int(self.shape) else (self.shape,)
        except TypeError:
            raise ParameterError(
                f"key field {self.name!r}: shape must be a tuple of integers, got {self.shape!r}"
            ) from None
        if not all(_is_int(d) for d in shape):
            raise ParameterError(
                f"key field {self.name!r}: shape must be a tuple of integers, got {self.shape!r}"
            )
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ParameterError(
                f"key field {self.name!r}: negative dimension in shape {shape}",
                "key shapes come from the compiler's padded gate shapes; this is a compiler bug",
            )
        if not _is_int(self.bits) or not 1 <= int(self.bits) <= 64:
            raise ParameterError(
                f"key field {self.name!r}: bit width must be between 1 and 64, got {self.bits!r}",
                "key values are stored in uint64",
            )
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "bits", int(self.bits))
        object.__setattr__(self, "share", bool(self.share))

    @property
    def count(self) -> int:
        """Number of values (product of ``shape``; 1 for a scalar field)."""
        return math.prod(self.shape)

    @property
    def packed_nbytes(self) -> int:
        """Bytes of the dense bit-packing, before alignment padding."""
        return packed_size(self.count, self.bits)

    @property
    def nbytes(self) -> int:
        """Bytes this field occupies in a slot: packed size rounded up to a multiple of 8."""
        return _round_up(self.packed_nbytes, ALIGN)

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "shape": list(self.shape), "bits": self.bits}
        if self.share:
            d["share"] = True
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "KeyField":
        try:
            if d.get("share", True) is not True:
                raise TypeError("share must be true when present")
            return cls(name=d["name"], shape=tuple(d["shape"]), bits=d["bits"], share=bool(d.get("share")))
        except (KeyError, TypeError, AttributeError) as e:
            raise ParameterError(f"malformed key field in layout JSON: {d!r} ({e})") from None

    def describe(self) -> str:
        return f"{self.name}[{','.join(str(d) for d in self.shape)}]:{self.bits}b" + ("+" if self.share else "")


# --------------------------------------------------------------------------- slots
@dataclass(frozen=True)
class GateSlot:
    """The keys of one gate instance inside a key set.

    ``offset`` (bytes from the start of the key set) is assigned by :class:`KeyLayout`;
    ``nbytes`` is the sum of the fields' ``nbytes`` (computed when left as ``None``).
    The fields are stored one after another in the order given (structure-of-arrays).
    """

    gate_id: str
    kind: str
    elements: int
    fields: tuple[KeyField, ...]
    offset: int = 0
    nbytes: int | None = _dc_field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.gate_id, str) or not self.gate_id:
            raise ParameterError(f"gate id must be a non-empty string, got {self.gate_id!r}")
        if not isinstance(self.kind, str) or not self.kind:
            raise ParameterError(f"gate {self.gate_id!r}: kind must be a non-empty string, got {self.kind!r}")
        if not _is_int(self.elements) or int(self.elements) < 0:
            raise ParameterError(
                f"gate {self.gate_id!r}: element count must be a non-negative integer, got {self.elements!r}"
            )
        fields = tuple(self.fields)
        for f in fields:
            if not isinstance(f, KeyField):
                raise ParameterError(f"gate {self.gate_id!r}: fields must be KeyField objects, got {f!r}")
        names = [f.name for f in fields]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ParameterError(f"gate {self.gate_id!r}: duplicate key field name(s) {dups}")
        if not _is_int(self.offset) or int(self.offset) < 0 or int(self.offset) % ALIGN:
            raise ParameterError(
                f"gate {self.gate_id!r}: slot offset must be a non-negative multiple of {ALIGN}, got {self.offset!r}"
            )
        total = sum(f.nbytes for f in fields)
        if self.nbytes is not None and (not _is_int(self.nbytes) or int(self.nbytes) != total):
            raise ParameterError(
                f"gate {self.gate_id!r}: slot size {self.nbytes!r} disagrees with its fields ({total} bytes)"
            )
        object.__setattr__(self, "elements", int(self.elements))
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "offset", int(self.offset))
        object.__setattr__(self, "nbytes", total)

    @property
    def end(self) -> int:
        """Byte offset just past this slot inside the key set."""
        return self.offset + self.nbytes

    def field(self, name: str) -> KeyField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"gate {self.gate_id!r} has no key field {name!r}")

    def field_offsets(self) -> dict[str, tuple[int, int]]:
        """``{name: (offset, nbytes)}`` with offsets relative to the start of the slot."""
        out: dict[str, tuple[int, int]] = {}
        pos = 0
        for f in self.fields:
            out[f.name] = (pos, f.nbytes)
            pos += f.nbytes
        return out

    def to_dict(self) -> dict[str, Any]:
        fields = []
        for f, (off, nb) in zip(self.fields, self.field_offsets().values()):
            d = f.to_dict()
            d["offset"] = off
            d["nbytes"] = nb
            fields.append(d)
        return {
            "gate_id": self.gate_id,
            "kind": self.kind,
            "elements": self.elements,
            "offset": self.offset,
            "nbytes": self.nbytes,
            "fields": fields,
        }


# --------------------------------------------------------------------------- layout
SlotSpec = tuple  # (gate_id, kind, elements, fields)


class KeyLayout:
    """The ordered keystream layout of one build (the key-consumption order).

    Built from an ordered iterable of ``(gate_id, kind, elements, fields)`` tuples (or
    :class:`GateSlot` objects, whose offsets are recomputed); offsets are assigned in
    that order.
    """

    def __init__(self, entries: Iterable[SlotSpec | GateSlot] = (), insecure: bool = False):
        self.insecure = bool(insecure)
        slots: list[GateSlot] = []
        index: dict[str, int] = {}
        pos = 0
        for e in entries:
            if isinstance(e, GateSlot):
                gate_id, kind, elements, fields = e.gate_id, e.kind, e.elements, e.fields
            else:
                try:
                    gate_id, kind, elements, fields = e
                except (TypeError, ValueError):
                    raise ParameterError(
                        f"layout entry must be (gate_id, kind, elements, fields), got {e!r}"
                    ) from None
            fields = tuple(f if isinstance(f, KeyField) else KeyField(*f) for f in fields)
            if gate_id in index:
                raise ParameterError(
                    f"duplicate gate id {gate_id!r} in key layout (slots {index[gate_id]} and {len(slots)})",
                    "every gate instance needs its own id; this is a compiler bug",
                )
            slot = GateSlot(gate_id, kind, elements, fields, offset=pos)
            index[gate_id] = len(slots)
            slots.append(slot)
            pos = slot.end
        self._slots: tuple[GateSlot, ...] = tuple(slots)
        self._index = index
        self._set_nbytes = pos
        self._json: str | None = None
        self._digest: str | None = None

    # ------------------------------------------------------------------ access
    @property
    def slots(self) -> list[GateSlot]:
        """The slots in key-consumption order."""
        return list(self._slots)

    def __iter__(self) -> Iterator[GateSlot]:
        return iter(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, gate_id: object) -> bool:
        return gate_id in self._index

    @property
    def gate_ids(self) -> list[str]:
        return [s.gate_id for s in self._slots]

    def slot(self, gate_id: str) -> GateSlot:
        try:
            return self._slots[self._index[gate_id]]
        except KeyError:
            raise KeyError(f"gate {gate_id!r} is not in the key layout") from None

    def position(self, gate_id: str) -> int:
        """Index of the gate's slot in consumption order."""
        self.slot(gate_id)
        return self._index[gate_id]

    @property
    def set_nbytes(self) -> int:
        """Bytes of one key set (the same for both parties)."""
        return self._set_nbytes

    def field_offsets(self, gate_id: str) -> dict[str, tuple[int, int]]:
        """``{field name: (offset, nbytes)}``, offsets from the start of the key set."""
        s = self.slot(gate_id)
        return {n: (s.offset + off, nb) for n, (off, nb) in s.field_offsets().items()}

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        d = {
            "format": LAYOUT_FORMAT,
            "set_nbytes": self._set_nbytes,
            "slots": [s.to_dict() for s in self._slots],
        }
        if self.insecure:       # only then: a padded layout's JSON (and digest) stays as it was
            d[INSECURE_KEY] = True
        return d

    def to_json(self, indent: int | None = None) -> str:
        """Canonical JSON (sorted keys, fixed separators); ``indent`` only for human reading.

        The digest is always taken over the compact form, so ``indent`` does not change it.
        """
        if indent is None:
            if self._json is None:
                self._json = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
            return self._json
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent, separators=(",", ": "))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "KeyLayout":
        if not isinstance(d, Mapping) or d.get("format") != LAYOUT_FORMAT:
            fmt = d.get("format") if isinstance(d, Mapping) else None
            raise ParameterError(
                f"not a fusec key layout (format {fmt!r}, expected {LAYOUT_FORMAT!r})",
                "keys.layout.json is written by `fusec compile`; recompile the model",
            )
        entries = []
        try:
            for s in d["slots"]:
                entries.append(
                    (s["gate_id"], s["kind"], s["elements"], tuple(KeyField.from_dict(f) for f in s["fields"]))
                )
        except (KeyError, TypeError) as e:
            raise ParameterError(f"malformed key layout JSON ({e!r})", "recompile the model") from None
        insecure = d.get(INSECURE_KEY, False)
        if insecure is not True and INSECURE_KEY in d:
            raise ParameterError(f"malformed key layout JSON ({INSECURE_KEY} must be true when present)",
                                 "recompile the model")
        layout = cls(entries, insecure=bool(insecure))
        # Offsets and sizes are derived; a file whose stored values disagree was edited or
        # written by an incompatible fusec, and must not be trusted.
        if layout.to_dict() != _normalize(d):
            raise ParameterError(
                "key layout JSON is inconsistent: stored offsets/sizes disagree with its fields",
                "keys.layout.json was edited by hand or written by another fusec version; recompile",
            )
        return layout

    @classmethod
    def from_json(cls, s: str | bytes) -> "KeyLayout":
        try:
            d = json.loads(s)
        except ValueError as e:
            raise ParameterError(f"key layout is not valid JSON: {e}", "recompile the model") from None
        return cls.from_dict(d)

    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON: the layout hash written into key files."""
        if self._digest is None:
            self._digest = hashlib.sha256(self.to_json().encode("ascii")).hexdigest()
        return self._digest

    def digest_bytes(self) -> bytes:
        return bytes.fromhex(self.digest())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyLayout):
            return NotImplemented
        return self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.digest())

    def __repr__(self) -> str:
        tag = ", INSECURE (mask-dependent shapes)" if self.insecure else ""
        return f"KeyLayout({len(self._slots)} slots, {self._set_nbytes} bytes/set, digest {self.digest()[:12]}{tag})"

    # ------------------------------------------------------------------ reporting
    def describe(self) -> list[tuple[str, str, int, int, int, str]]:
        """Rows ``(gate id, kind, elements, offset, bytes, fields)`` in consumption order.

        ``fields`` reads e.g. ``"scw[20,128,2]:64b tcw[20,128,2]:1b r_out[128]:50b+"`` (``+``: an
        additive share, which the dealer may derive from a seed).
        Column names are in :data:`DESCRIBE_COLUMNS`.
        """
        return [
            (s.gate_id, s.kind, s.elements, s.offset, s.nbytes, " ".join(f.describe() for f in s.fields))
            for s in self._slots
        ]

    def format_table(self) -> str:
        """A plain-text table of :meth:`describe` with a total line."""
        rows = [tuple(str(c) for c in DESCRIBE_COLUMNS)] + [
            tuple(str(c) for c in r) for r in self.describe()
        ]
        tag = ", INSECURE: mask-dependent key shapes (padding ablation only)" if self.insecure else ""
        rows.append(("total", "", "", "", str(self._set_nbytes),
                     f"{len(self._slots)} gates, digest {self.digest()[:16]}{tag}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(DESCRIBE_COLUMNS))]
        numeric = {2, 3, 4}
        lines = []
        for k, r in enumerate(rows):
            cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
            lines.append("  ".join(cells).rstrip())
            if k == 0 or k == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _normalize(d: Any) -> Any:
    """JSON round trip, so tuples compare equal to lists."""
    return json.loads(json.dumps(d, sort_keys=True))


# --------------------------------------------------------------------------- packing
def _field_values(slot: GateSlot, f: KeyField, arr: Any) -> np.ndarray:
    """Validate one field's array and return it as an unsigned array: uint64, or the narrower
    unsigned type it came in (the dealer's split gives a share field the narrowest one), not
    widened here since packing reads any unsigned width."""
    a = np.asarray(arr)
    where = f"gate {slot.gate_id!r} ({slot.kind}) field {f.name!r}"
    if a.shape != f.shape:
        raise KeyFileError(
            f"{where}: array has shape {a.shape}, the layout expects {f.shape}",
            "the dealer and the compiled layout disagree on the gate's key shape",
        )
    if a.dtype == np.bool_:
        a = a.astype(np.uint64)
    elif a.dtype.kind == "i":
        if a.size and a.min() < 0:
            i = np.unravel_index(int(np.argmax(a < 0)), a.shape)
            raise KeyFileError(
                f"{where}: negative value {int(a[i])} at index {tuple(int(k) for k in i)}; "
                f"key values are {f.bits}-bit ring elements in [0, 2^{f.bits})",
                "reduce values mod 2^bits before writing keys (dealer bug)",
            )
        a = a.astype(np.uint64)
    elif a.dtype.kind != "u":
        raise KeyFileError(
            f"{where}: array has dtype {a.dtype}; key values must be unsigned integers",
            "dealer bug: keys are uint64 ring elements",
        )
    if f.bits < 8 * a.dtype.itemsize and a.size and int(a.max()) >> f.bits:   # one pass; the index only then
        too_wide = (a >> a.dtype.type(f.bits)) != 0
        if too_wide.any():
            i = np.unravel_index(int(np.argmax(too_wide)), a.shape)
            raise KeyFileError(
                f"{where}: value {int(a[i])} at index {tuple(int(k) for k in i)} does not fit in "
                f"{f.bits} bits (max {int(mask(f.bits))})",
                "dealer bug: reduce the value mod 2^bits, or widen the field in the layout",
            )
    return a


def _check_field_names(slot: GateSlot, arrays: Mapping[str, Any]) -> None:
    if not isinstance(arrays, Mapping):
        raise KeyFileError(f"gate {slot.gate_id!r}: keys must be a dict of field name -> array, got {type(arrays).__name__}")
    want = [f.name for f in slot.fields]
    missing = [n for n in want if n not in arrays]
    extra = sorted(str(n) for n in arrays if n not in set(want))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing field(s) {missing}")
        if extra:
            parts.append(f"unexpected field(s) {extra}")
        raise KeyFileError(
            f"gate {slot.gate_id!r} ({slot.kind}): {' and '.join(parts)}; the layout has {want}",
            "the dealer and the compiled layout disagree on the gate's key fields",
        )


def pack_gate_array(slot: GateSlot, arrays: Mapping[str, Any]) -> np.ndarray:
    """Like :func:`pack_gate_key` but returns a fresh ``uint8`` array of ``slot.nbytes``."""
    _check_field_names(slot, arrays)
    values = [_field_values(slot, f, arrays[f.name]) for f in slot.fields]  # validate all first
    out = np.zeros(slot.nbytes, dtype=np.uint8)
    pos = 0
    for f, v in zip(slot.fields, values):
        if f.count:
            out[pos : pos + f.packed_nbytes] = pack_bits(v, f.bits)
        pos += f.nbytes
    return out


def pack_field(slot: GateSlot, f: KeyField, values: Any) -> np.ndarray:
    """One field's values (``f.shape``, checked as :func:`pack_gate_key` checks them) densely
    bit-packed: ``f.packed_nbytes`` fresh bytes. ``f`` may be a part of one of the slot's
    fields (a gate keyed in element chunks: runtime/keygen_chunks.py)."""
    return pack_bits(_field_values(slot, f, values), f.bits) if f.count else np.zeros(0, np.uint8)


def pack_gate_key(slot: GateSlot, arrays: Mapping[str, Any]) -> bytes:
    """Pack one gate's key arrays into its slot bytes (``slot.nbytes`` long).

    Raises :class:`KeyFileError` (naming the gate and the field) on a missing or extra
    field, an array of the wrong shape or dtype, or a value ``>= 2^bits``.
    """
    return pack_gate_array(slot, arrays).tobytes()


def unpack_gate_key(slot: GateSlot, buf: Any) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_gate_key`: ``{field: uint64 array of the field's shape}``.

    ``buf`` is exactly the slot's bytes (``bytes``, ``memoryview`` or a ``uint8`` array,
    e.g. a slice of a key set read from disk); it is not copied, the results are fresh.
    """
    if isinstance(buf, np.ndarray):
        b = buf.reshape(-1).view(np.uint8) if buf.dtype != np.uint8 else buf.reshape(-1)
    else:
        b = np.frombuffer(buf, dtype=np.uint8)
    if b.size != slot.nbytes:
        raise KeyFileError(
            f"gate {slot.gate_id!r}: key buffer holds {b.size} bytes, the layout says {slot.nbytes}"
        )
    out: dict[str, np.ndarray] = {}
    pos = 0
    for f in slot.fields:
        if f.count:
            v = unpack_bits(b[pos : pos + f.packed_nbytes], f.bits, f.count)
        else:
            v = np.zeros(0, dtype=np.uint64)
        out[f.name] = v.reshape(f.shape)
        pos += f.nbytes
    return out
