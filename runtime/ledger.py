"""The reuse ledger: which key sets of a keygen run this server has consumed.

Evaluating one key set on two inputs leaks their difference, so a server evaluates each
key set at most once. The record lives in the server's *state directory*, keyed by the
key-set id the dealer wrote into both key files and by the party, not beside the key
file: a copied, moved or renamed key file is still the same key set, and deleting
something next to the key file resets nothing.

Layout: ``STATE/used/<key-set id>.p<party>/<index>``, one small file per consumed set,
created with ``O_CREAT | O_EXCL`` (atomic: of two processes claiming one set, exactly
one succeeds, with no lock and no read-modify-write), then fsynced together with its
directory before the set is read: mark, then use, so a crash after a claim never lets
that set be evaluated again. A name in the record that is not a set index means the
record was tampered with; it is refused rather than guessed around.

The state directory is ``--state-dir``, else ``$FUSEC_STATE_DIR``, else
``$XDG_STATE_HOME/fusec``, else ``~/.local/state/fusec``. Deleting it forgets which sets
were used: keep it as long as the key files it speaks for.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from fusec.errors import KeyFileError

__all__ = ["Ledger", "default_state_dir", "fsync_dir"]

_DIR_MODE = 0o700


def default_state_dir() -> Path:
    """Where a server records consumed key sets unless told otherwise (read at call time)."""
    env = os.environ.get("FUSEC_STATE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "fusec"
    return Path.home() / ".local" / "state" / "fusec"


def fsync_dir(d: Path) -> None:
    """Make a rename or a new entry in ``d`` durable (POSIX: fsync the directory)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _unusable(state_dir: Path, why: object) -> KeyFileError:
    return KeyFileError(
        f"cannot keep the record of used key sets in {state_dir} ({why})",
        "pass --state-dir DIR (or set FUSEC_STATE_DIR) to a directory this server can write and keeps",
    )


class Ledger:
    """Consumed key sets of one party's key file of one keygen run."""

    def __init__(self, state_dir: str | os.PathLike, key_set_id: str, party: int, count: int):
        self.state_dir = Path(state_dir)
        self.key_set_id = key_set_id
        self.party = party
        self.count = count
        self.path = self.state_dir / "used" / f"{key_set_id}.p{party}"

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    def ensure(self) -> None:
        """Create the record's directory and check it is writable: a server learns of an
        unusable state directory before it connects, not when it claims."""
        made = []
        try:
            for d in (self.state_dir, self.state_dir / "used", self.path):
                if not d.is_dir():
                    d.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
                    made.append(d)
        except OSError as e:
            raise _unusable(self.state_dir, e.strerror or e) from None
        for d in made:
            fsync_dir(d.parent)
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise _unusable(self.state_dir, f"{self.path} is not writable")

    def used(self) -> set[int]:
        """Indices recorded as consumed."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return set()
        except OSError as e:
            raise _unusable(self.state_dir, e.strerror or e) from None
        used, bad = set(), []
        for name in names:
            if name.isdigit() and name == str(int(name)) and int(name) < self.count:
                used.add(int(name))
            else:
                bad.append(name)
        if bad:
            raise KeyFileError(
                f"the record of used key sets {self.path} holds {bad[:3]}, which is not a key set of this "
                f"file (0..{self.count - 1}); refusing to guess which sets were used",
                "generate fresh keys with fusec keygen (a new keygen run starts a new record)",
            )
        return used

    def mark(self, index: int, note: dict | None = None) -> bool:
        """Record set ``index`` as consumed, durably. False if it already was (by anyone)."""
        self.ensure()
        entry = self.path / str(index)
        try:
            fd = os.open(entry, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        except OSError as e:
            raise _unusable(self.state_dir, e.strerror or e) from None
        try:
            os.write(fd, json.dumps({"claimed_at": time.time(), **(note or {})}).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.path)
        return True
