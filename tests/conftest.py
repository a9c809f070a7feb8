"""Shared set-up of the test suite: the one import path of the test helpers.

The helpers (``tests/harness.py``: P0 and P1 in two threads; ``tests/fakedevice.py``: a
strict stand-in for CuPy) are imported as ``tests.harness`` / ``tests.fakedevice`` and
nothing else: the ``tests`` folder is not part of the installed package, so a helper can
never load twice under two module names (two copies of its state). This file puts the
checkout's root first on ``sys.path`` so that ``tests`` is this checkout's folder under
every pytest import mode and from any working directory.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p != str(ROOT)]


def _private_state_dir() -> None:
    """Servers the tests start (threads and `fusec` subprocesses, which inherit the
    environment) record used key sets in a throwaway state directory, never in the
    user's ~/.local/state/fusec (runtime/ledger.py). Tests that look at the ledger set
    their own with monkeypatch."""
    import os
    import tempfile

    os.environ.setdefault("FUSEC_STATE_DIR", tempfile.mkdtemp(prefix="fusec-test-state-"))


_private_state_dir()
