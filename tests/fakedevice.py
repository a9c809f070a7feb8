"""A strict stand-in for CuPy, so the GPU code path can be tested where there is no GPU.

CuPy refuses to mix its arrays with numpy arrays (``cupy_array + numpy_array`` and
``numpy.asarray(cupy_array)`` raise TypeError): every host/device crossing must be an
explicit ``asarray``/``asnumpy``. Code that forgets one works on the CPU backend and
fails on the GPU. :data:`fakecupy` reproduces exactly that rule with a numpy subclass
(:class:`DeviceArray`), so the whole two-party runtime and the dealer can run on the
"device" in CI and every forgotten crossing fails here, not on a rented GPU.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy

from fusec.runtime.backend import Backend
from fusec.runtime.prg import CpuPrg
from fusec.runtime.rng import DealerRng


class DeviceArray(numpy.ndarray):
    """An array that lives on the pretend device."""

    def __array__(self, dtype=None, copy=None):  # numpy.asarray(device array): refused, like CuPy
        raise TypeError("implicit conversion of a device array to a host numpy array (use asnumpy)")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _refuse_host(inputs, f"ufunc {ufunc.__name__}")
        out = kwargs.get("out")
        if out is not None:
            _refuse_host(out, f"ufunc {ufunc.__name__} out=")
            kwargs["out"] = tuple(_host_view(o) for o in out)
        res = getattr(ufunc, method)(*(_host_view(i) for i in inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _device(res)

    def __array_function__(self, func, types, args, kwargs):
        _refuse_host((args, kwargs), func.__name__)
        return _device(func(*_unwrap(args), **_unwrap(kwargs)))

    def get(self) -> numpy.ndarray:
        return _host_view(self).copy()


def _host_view(a):
    return a.view(numpy.ndarray) if isinstance(a, DeviceArray) else a


def _refuse_host(obj: Any, where: str) -> None:
    if isinstance(obj, DeviceArray):
        return
    if isinstance(obj, numpy.ndarray):
        raise TypeError(f"{where}: a host numpy array {obj.shape} {obj.dtype} was mixed with device arrays "
                        "(a missing asarray on the GPU path)")
    if isinstance(obj, (list, tuple)):
        for o in obj:
            _refuse_host(o, where)
    elif isinstance(obj, dict):
        for o in obj.values():
            _refuse_host(o, where)


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, DeviceArray):
        return _host_view(obj)
    if isinstance(obj, list):
        return [_unwrap(o) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_unwrap(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def _device(res: Any) -> Any:
    if isinstance(res, numpy.ndarray) and not isinstance(res, DeviceArray):
        return res.view(DeviceArray)
    if isinstance(res, tuple):
        return tuple(_device(r) for r in res)
    if isinstance(res, list):
        return [_device(r) for r in res]
    return res


class _FakeCupy(ModuleType):
    """Module-like: ``fakecupy.zeros(...)`` is a device array; host arrays are refused."""

    def __init__(self) -> None:
        super().__init__("fakecupy")
        self.ndarray = DeviceArray

    def asarray(self, a, dtype=None):
        return numpy.array(_host_view(a), dtype=dtype, copy=True).view(DeviceArray) \
            if not isinstance(a, DeviceArray) or dtype not in (None, a.dtype) else a

    def asnumpy(self, a):
        return _host_view(a).copy() if isinstance(a, DeviceArray) else numpy.asarray(a)

    def __getattr__(self, name: str):
        obj = getattr(numpy, name)
        if not callable(obj) or isinstance(obj, type):
            return obj

        def wrapped(*args, **kwargs):
            _refuse_host((args, kwargs), f"fakecupy.{name}")
            return _device(obj(*_unwrap(args), **_unwrap(kwargs)))

        return wrapped


fakecupy = _FakeCupy()


class _HostPrg:
    """The CPU PRG behind the device boundary: what the GPU PRG kernels compute."""

    def __init__(self) -> None:
        self._cpu = CpuPrg()

    def children(self, seeds):
        return tuple(_device(h) for h in self._cpu.children(_host_view(seeds)))

    def child(self, seeds, right):
        return _device(self._cpu.child(_host_view(seeds), _host_view(right)))

    def value_blocks(self, blocks, nblocks, tweak):
        return _device(self._cpu.value_blocks(_host_view(blocks), nblocks, tweak))

    def value_stream(self, seed, nblocks, tweak, start=0):
        return _device(self._cpu.value_stream(_host_view(seed), nblocks, tweak, start=start))

    @property
    def aes_calls(self) -> int:
        return self._cpu.aes_calls


class FakeDeviceBackend(Backend):
    """The GPU backend's data path (device arrays, explicit crossings) on the CPU."""

    name = "fakegpu"
    xp = fakecupy

    def __init__(self) -> None:
        super().__init__()
        self.prg = _HostPrg()

    def asarray(self, a):
        return fakecupy.asarray(a)

    def asnumpy(self, a):
        return fakecupy.asnumpy(a)


class _DeviceRng(DealerRng):
    """The dealer's CSPRNG stream, delivered as device arrays (as the GPU dealer's is)."""

    def words(self, count: int):
        return _device(super().words(count))


def _dealer_rng(self, seed: bytes | None = None):
    return _DeviceRng(seed)


FakeDeviceBackend.dealer_rng = _dealer_rng  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- the GPU backend on the host
def host_kernel_backend(source: str, library) -> type:
    """A backend class running :class:`~fusec.runtime.gpu_backend.GpuBackend`'s own code
    (round pack/unpack kernels, a key set unpacked by one kernel, the DCF/DPF walks, the
    dealer's AES-CTR stream) through the host build of the generated kernels (``library``,
    from ``codegen.cuda.compile_host_library(source, ...)``) on fake device arrays: CI
    runs the GPU data path, kernels included, with no GPU. Only the page-locked copies and
    CUDA's memory queries are left out."""
    from fusec.runtime.device_keys import unpack_key_set
    from fusec.runtime.seeded_shares import inflated
    from fusec.runtime.gpu_backend import GpuBackend, GpuPrg
    from fusec.runtime.gpu_kernels import GpuKernels, HostLauncher

    class _Launcher(HostLauncher):
        def __init__(self) -> None:
            super().__init__(library)
            self.xp = fakecupy

    class HostKernelBackend(GpuBackend):
        name = "hostgpu"

        def __init__(self) -> None:  # no CuPy: the kernels run on the host
            self.xp = fakecupy
            self.kernels = GpuKernels(source, launcher=_Launcher())
            self.prg = GpuPrg(self.kernels)
            self.last_stage_seconds = None
            self._outbox = self._key_host = None

        def pack_round(self, layout, shares):
            if not self.kernels.has("fusec_pack_round"):        # kernels of an older build
                return Backend.pack_round(self, layout, shares)
            return fakecupy.asnumpy(self.kernels.pack_round(layout, shares)).tobytes() if layout.our_bytes else b""

        def host_buffer(self, nbytes: int):
            return None

        def receive_buffer(self, nbytes: int):     # reused like the GPU's page-locked one
            buf = getattr(self, "_inbox", None)
            if buf is None or buf.size < nbytes:
                self._inbox = buf = numpy.empty(max(nbytes, 1), numpy.uint8)
            return buf[:nbytes]

        def _pinned(self, nbytes: int):
            return numpy.empty(int(nbytes), numpy.uint8)

        def _get_into(self, dev, out) -> None:
            out[...] = fakecupy.asnumpy(dev)

        def stage_set(self, layout, buf, stream: bool = False, seeded_party=None):
            from fusec.runtime.backend import StagedKeys

            sset, host = self.stored_set(layout, buf, seeded_party)
            if stream:
                return self.stream_set(sset, host)
            if self.cuda_graphs:        # launch-plan staging: every set unpacked into one buffer
                return self._stage_fixed(sset, host)
            if not self.kernels.has("fusec_unpack_round"):
                return Backend.stage_set(self, layout, host if not sset.seeded else
                                         inflated(layout, seeded_party, host))
            if sset.seeded:             # the GPU's up-front path: chunks inflated on the device, unpacked
                count = sum(f.count for s in layout.slots for f in s.fields)
                return StagedKeys(layout.gate_ids, ready=self._unpack_in_chunks(sset, host, fakecupy.empty(count, numpy.uint64)))
            dev = fakecupy.asarray(host)
            return StagedKeys(layout.gate_ids, ready=unpack_key_set(self.kernels, layout, dev))

        def synchronize(self) -> None:
            pass

    return HostKernelBackend
