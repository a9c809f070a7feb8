"""The hello: two servers meet, check they hold the two halves of one keygen run, and
prove it to each other before either claims (marks used) a key set.

Anyone who can reach ``--listen`` can connect and echo what it hears, so nothing in the
hello is trusted until the peer has proven it holds the matching key file: the dealer
wrote the same random *pairing secret* into both files (runtime/keyfile.py), and each
server proves knowledge of it with an HMAC over the whole hello transcript, which
contains a fresh random nonce from each side.

Round 1, the hello (at most ``HELLO_MAX`` bytes: a frame before authentication is tiny
and bounded): ``b"fusec-hello/2\\n"`` + canonical JSON ``{party, layout, key_set_id, set,
nonce}``. Each side checks the peer's hello: another party, the same layout digest, the
same key-set id (all clear errors, nothing secret yet).

Round 2, the proof (exactly ``PROOF_BYTES``): each side sends
``HMAC-SHA256(secret, b"fusec-pair/1" | sender | len|hello of P0 | len|hello of P1)``
and checks the peer's in constant time. The sender's party id in the MAC input keeps a
peer from reflecting our own proof back at us; our fresh nonce in the transcript keeps it
from replaying one recorded earlier.

Only then is the key set agreed: the larger of the two proposed indices (each side
proposes its next unused set; if one side consumed a set the other did not, e.g. a run
that failed on one side, both skip it rather than one of them reusing it). The agreed
index is authenticated too: it is a function of the proven transcript.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from fusec.errors import PeerError
from fusec.runtime.channel import Channel

MARKER = b"fusec-hello/2\n"
HELLO_MAX = 1024
PROOF_BYTES = 32
_NONCE_BYTES = 32
_LABEL = b"fusec-pair/1"


@dataclass(frozen=True)
class Hello:
    """What one server says about itself."""

    party: int
    layout: str
    key_set_id: str
    set: int
    nonce: str

    def encode(self) -> bytes:
        return MARKER + json.dumps(self.__dict__, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> "Hello":
        """The peer's hello, or a PeerError if it is not a well-formed fusec hello."""
        fields: Any = None
        if data.startswith(MARKER):
            try:
                fields = json.loads(bytes(data[len(MARKER):]))
            except ValueError:
                pass
        types = {"party": int, "layout": str, "key_set_id": str, "set": int, "nonce": str}
        if not (isinstance(fields, dict) and set(fields) == set(types)
                and all(type(fields[k]) is t for k, t in types.items())):
            raise PeerError("the peer is not a fusec party of this version (unexpected hello)",
                            "check that --peer/--listen point at the other fusec server, "
                            "and that both run the same fusec version")
        return cls(**fields)


def _proof(secret: bytes, sender: int, hellos: tuple[bytes, bytes]) -> bytes:
    msg = _LABEL + bytes([sender]) + b"".join(struct.pack("<I", len(h)) + h for h in hellos)
    return hmac.new(secret, msg, hashlib.sha256).digest()


def pair(channel: Channel, party: int, layout_digest: str, key_set_id: str, pairing_secret: bytes,
         proposed: int, count: int) -> int:
    """Meet the peer; return the agreed key-set index once the peer has proven it holds
    the matching key file. Raises PeerError (and nothing is claimed) otherwise."""
    me = Hello(party, layout_digest, key_set_id, int(proposed), os.urandom(_NONCE_BYTES).hex())
    mine = me.encode()
    theirs = bytes(channel.exchange(mine, "handshake", HELLO_MAX))
    peer = Hello.decode(theirs)
    if peer.party != 1 - party:
        raise PeerError(f"the peer says it is party {peer.party}, expected party {1 - party}",
                        "start one server with --party 0 and the other with --party 1")
    if peer.layout != layout_digest:
        raise PeerError("the peer runs a different build (layout hash differs)",
                        "both servers must use the same build directory and matching key files")
    if peer.key_set_id != key_set_id:
        raise PeerError("the peer's key file comes from another keygen run (key-set ids differ)",
                        "give each server its file from the same `fusec keygen` output")
    if not 0 <= peer.set < count:
        raise PeerError(f"the peer proposes key set {peer.set}, but the key files hold sets 0..{count - 1}",
                        "the peer is not a fusec server of this key file")
    if peer.nonce == me.nonce:
        raise PeerError("the peer echoed our hello", "someone other than the fusec peer answered")
    hellos = (mine, theirs) if party == 0 else (theirs, mine)
    got = bytes(channel.exchange(_proof(pairing_secret, party, hellos), "handshake", PROOF_BYTES))
    if not hmac.compare_digest(got, _proof(pairing_secret, 1 - party, hellos)):
        raise PeerError("the peer could not prove it holds the matching key file (pairing check failed); "
                        "no key set was used",
                        "give the peer the other key file of the same `fusec keygen` run; if it has it, "
                        "something else answered on this address")
    return max(int(proposed), peer.set)
