"""Errors a user can act on.

Every failure that can come from bad input (a model, a key file, a peer, a parameter)
raises a subclass of :class:`FusecError`. The CLI prints ``str(err)`` and exits with
status 2 instead of showing a traceback, so the message must say what is wrong and what
to do about it.
"""
from __future__ import annotations


class FusecError(Exception):
    """Base class: a problem the user can fix. ``hint`` says how."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class ParameterError(FusecError, ValueError):
    """A parameter is out of range (bit width, shift, empty tensor, ...)."""


class KeyFileError(FusecError):
    """A key file is missing, of the other party, of another layout, corrupt or used."""


class KeyReuseError(KeyFileError):
    """A key set was already consumed; evaluating it again would leak x1 - x2."""


class PeerError(FusecError):
    """The other party disconnected, stalled past the timeout, or is not who we expect."""


class CompileError(FusecError):
    """The model cannot be compiled (unsupported op, dynamic shape, ...)."""


class GpuKernelError(FusecError):
    """A generated kernel failed to compile, launch or run (the runtime adds the gate and round)."""
