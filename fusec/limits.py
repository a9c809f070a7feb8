"""Resource limits for compiling untrusted models: sizes checked before anything is allocated.

A hostile or corrupt ONNX file can ask for a ``ConstantOfShape`` of 10^10 elements, a
``Range`` to 10^12, or a constant ``Loop`` of 10^12 iterations; evaluated naively each takes
gigabytes of memory or hours before anything fails. Every place that is about to allocate
or evaluate something whose size comes from the model (input shapes, initializers,
external data, ONNX shape inference, constant folding, calibration) asks this module
first, and a size over the limit becomes one ``CompileError`` naming the node and the size.

The limits are one frozen dataclass, set for the duration of a compile with
:func:`using` (``fusec compile --max-elements/--max-bytes/--fold-seconds``) and read
with :func:`current`, so the frontend and the passes need no extra parameters.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import signal
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

from fusec.errors import CompileError

__all__ = ["Limits", "current", "using", "check_size", "Budget", "fmt_bytes", "HINT"]

#: what to do about a size over the limit (every limit error says it)
HINT = ("a malformed or hostile model asks for this; if the model is genuine, raise the limit "
        "(fusec compile --max-elements / --max-bytes)")


@dataclass(frozen=True)
class Limits:
    """How much one tensor, all constants together, and the compile-time evaluation may take."""
    max_elements: int = 2 ** 31         # elements of any one tensor (shape, constant, intermediate)
    max_bytes: int = 8 * 2 ** 30        # bytes of any one tensor, and of all folded constants together
    fold_seconds: float = 300.0         # wall time constant folding may take (all nodes together)
    calib_seconds: float = 1800.0       # wall time of the calibration run
    max_loop_iterations: int = 1_000_000  # trip count of a constant Loop that is folded

    def __post_init__(self):
        for name in ("max_elements", "max_bytes", "max_loop_iterations"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise CompileError(f"limit {name} must be a positive integer, got {v!r}")
        for name in ("fold_seconds", "calib_seconds"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise CompileError(f"limit {name} must be a positive finite number of seconds, got {v!r}")


_CURRENT: contextvars.ContextVar[Limits] = contextvars.ContextVar("fusec_limits", default=Limits())


def current() -> Limits:
    """The limits in force (the defaults outside :func:`using`)."""
    return _CURRENT.get()


@contextlib.contextmanager
def using(limits: Limits | None) -> Iterator[Limits]:
    """Run a compile under ``limits`` (None: keep the ones in force)."""
    if limits is None:
        yield current()
        return
    token = _CURRENT.set(limits)
    try:
        yield limits
    finally:
        _CURRENT.reset(token)


def fmt_bytes(n: float) -> str:
    for unit, k in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= k:
            return f"{n / k:.3g} {unit}"
    return f"{int(n)} bytes"


def _fmt_count(n: int) -> str:
    return f"{n:,}" if n < 10 ** 7 else f"{n:.3g}"


def elements(shape: Sequence[int]) -> int:
    """Exact element count (Python ints: no int64 overflow for absurd shapes)."""
    n = 1
    for d in shape:
        n *= max(int(d), 0)
    return n


def check_size(shape: Sequence[int], itemsize: int, what: str, limits: Limits | None = None) -> None:
    """Refuse a tensor of ``shape`` (``itemsize`` bytes an element) over the limits.
    ``what`` names it: "node 'X' (Range): output 'y'"."""
    lim = limits or current()
    if any(int(d) < 0 for d in shape):
        raise CompileError(f"{what} has a negative dimension in shape {list(map(int, shape))}",
                           "the model (or a shape given on the command line) is malformed")
    n = elements(shape)
    nbytes = n * max(int(itemsize), 1)
    if n > lim.max_elements or nbytes > lim.max_bytes:
        shown = list(map(int, shape)) if len(shape) <= 8 else f"rank-{len(shape)} shape"
        raise CompileError(f"{what} would have shape {shown}: {_fmt_count(n)} elements ({fmt_bytes(nbytes)}), over "
                           f"the limit of {_fmt_count(lim.max_elements)} elements / {fmt_bytes(lim.max_bytes)}", HINT)


class BudgetExceeded(BaseException):
    """Raised (by SIGALRM) inside an evaluation that ran past its time budget; a BaseException so
    the evaluator's own ``except Exception`` cannot swallow it. ``guard`` turns it into a CompileError."""


class Budget:
    """A wall-clock budget shared by many evaluations (all constant folds of one compile).

    ``guard(what)`` bounds one evaluation by what is left: onnxruntime is stopped through its
    ``RunOptions.terminate`` flag (from a timer thread), Python code (the ONNX reference
    evaluator, numpy ops) by SIGALRM where this is the main thread. Either way the caller
    gets a ``CompileError`` naming ``what`` and the budget, never a hang.
    """

    def __init__(self, seconds: float, flag: str = "--fold-seconds"):
        self.seconds = float(seconds)
        self.flag = flag
        self.deadline = time.monotonic() + self.seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def error(self, what: str) -> CompileError:
        return CompileError(f"{what} did not finish within the compile-time evaluation budget of {self.seconds:g} s",
                            f"a malformed or hostile model asks for this; if the model is genuine, raise {self.flag}")

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise self.error(what)

    @contextlib.contextmanager
    def guard(self, what: str, run_options=None) -> Iterator[None]:
        left = self.left()
        if left <= 0:
            raise self.error(what)
        timer = None
        if run_options is not None:
            timer = threading.Timer(left, lambda: setattr(run_options, "terminate", True))
            timer.daemon = True
            timer.start()
        alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
        old, old_timer, t0 = None, (0.0, 0.0), time.monotonic()
        if alarm:
            def _raise(signum, frame):  # noqa: ARG001
                raise BudgetExceeded(what)
            try:
                old = signal.signal(signal.SIGALRM, _raise)
                old_timer = signal.setitimer(signal.ITIMER_REAL, left + 0.05)
            except ValueError:          # not the main interpreter thread after all
                alarm = False

        def disarm() -> None:
            if timer is not None:
                timer.cancel()
            if alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old if old is not None else signal.SIG_DFL)
                if old_timer[0] > 0:    # someone else's alarm (a test timeout): give it back what is left
                    signal.setitimer(signal.ITIMER_REAL, max(old_timer[0] - (time.monotonic() - t0), 1e-3),
                                     old_timer[1])

        try:
            yield
        except BudgetExceeded:
            raise self.error(what) from None
        finally:
            # the alarm may fire while the body's own error (onnxruntime's "terminate flag") is
            # unwinding, before it is disarmed: finish disarming, then report the budget
            fired = False
            while True:
                try:
                    disarm()
                    break
                except BudgetExceeded:
                    fired = True
            if fired:
                raise self.error(what) from None
        if run_options is not None and getattr(run_options, "terminate", False):
            raise self.error(what)
