"""The array module the dealer and the online phase compute with: numpy or CuPy.

Gates, DPF/DCF keygen and the tree code are written once, against ``np`` imported from
here. ``np`` is a thin proxy: array functions resolve to the *current* array module —
numpy by default, CuPy while a GPU backend runs (:func:`using`) — so the same source
runs on the host and on the device and the CPU backend stays the bit-exact reference
for the GPU one. Names that describe the host (shapes, dtypes, ``prod`` of a shape,
``errstate``...) always resolve to numpy.

The choice is a context variable: the executor (``protocol.drive``) and the dealer set it
for exactly the code they run, so two parties in two threads may use two backends.
"""
from __future__ import annotations

import contextlib
import contextvars
from types import ModuleType
from typing import Any, Iterator

import numpy

_current: contextvars.ContextVar[ModuleType] = contextvars.ContextVar("fusec_array_module", default=numpy)

#: Host-side helpers: they take shapes, dtypes or Python numbers, never device data.
_HOST = frozenset({
    "prod", "shape", "size", "ndim", "iinfo", "finfo", "dtype", "errstate", "frombuffer", "vectorize",
    "linspace", "gradient", "integer", "floating", "unravel_index", "isscalar", "ndarray", "generic",
    "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64", "bool_",
    "intp", "result_type", "can_cast", "random", "testing", "math", "pi", "e", "inf", "nan",
})


def current() -> ModuleType:
    """The array module of the running backend (numpy or cupy)."""
    return _current.get()


@contextlib.contextmanager
def using(module: ModuleType) -> Iterator[ModuleType]:
    """Run the enclosed dealer/evaluation code on ``module``'s arrays."""
    token = _current.set(module)
    try:
        yield module
    finally:
        _current.reset(token)


_const_cache: dict[tuple[int, str], tuple[numpy.ndarray, Any]] = {}


def const(a: Any) -> Any:
    """A gate's public constant (weights, tables, thresholds) as an array of the current module.

    Gates keep constants as read-only host arrays; on a device each is copied over once
    and cached (keyed by the host array, which the cache keeps alive, so ids are not reused).
    """
    mod = _current.get()
    if mod is numpy or not isinstance(a, numpy.ndarray):
        return a if mod is numpy else mod.asarray(a)
    if a.flags.writeable:
        return mod.asarray(a)
    key = (id(a), mod.__name__)
    hit = _const_cache.get(key)
    if hit is None:
        hit = _const_cache[key] = (a, mod.asarray(a))
    return hit[1]


def frozen(a: numpy.ndarray) -> numpy.ndarray:
    """Mark a gate constant read-only (so :func:`const` may cache its device copy)."""
    a.flags.writeable = False
    return a


class _ArrayModule:
    """``np.<name>`` -> the current module's ``<name>`` (numpy's for host-only names)."""

    def __getattr__(self, name: str) -> Any:
        if name in _HOST:
            return getattr(numpy, name)
        mod = _current.get()
        try:
            return getattr(mod, name)
        except AttributeError:
            fallback = _FALLBACKS.get(name)
            if fallback is None:
                raise
            return fallback

    def __repr__(self) -> str:
        return f"<fusec array module proxy -> {_current.get().__name__}>"


def _bitwise_count(x):
    """Population count for array modules without ``bitwise_count`` (older CuPy)."""
    x = x.astype(numpy.uint64)
    x = x - ((x >> numpy.uint64(1)) & numpy.uint64(0x5555555555555555))
    x = (x & numpy.uint64(0x3333333333333333)) + ((x >> numpy.uint64(2)) & numpy.uint64(0x3333333333333333))
    x = (x + (x >> numpy.uint64(4))) & numpy.uint64(0x0F0F0F0F0F0F0F0F)
    return ((x * numpy.uint64(0x0101010101010101)) >> numpy.uint64(56)).astype(numpy.uint8)


_FALLBACKS = {"bitwise_count": _bitwise_count}

np = _ArrayModule()
