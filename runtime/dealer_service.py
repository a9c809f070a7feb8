"""The dealer as a service: key sets streamed to the two servers over TCP when both ask
(the protocol and the servers' side are in runtime/keystream.py; ``fusec keygen --serve``)."""
from __future__ import annotations

from fusec.errors import PeerError
from fusec.runtime import keystream as ks
from fusec.runtime.backend import Backend, get_backend
from fusec.runtime.dealer import SetGenerator, share_seed_rng
from fusec.runtime.graph import GateGraph
from fusec.runtime.keyfile import new_key_set_id, new_pairing_secret
from fusec.runtime.seeded_shares import party_layout


def serve_keys(graph: GateGraph, listener, count: int, seed: bytes | None = None, backend: Backend | None = None,
               timeout: float = 3600.0, progress=None, log=None) -> dict[str, float]:
    """The dealer as a service (runtime/keystream.py): ``count`` key sets streamed to the
    two servers that connect to ``listener`` (a :class:`~fusec.runtime.channel.TcpListener`,
    TLS when it has a context), each set generated once both asked for it. Servers may come
    in several sessions (e.g. one ``fusec run`` pair per inference); sets are numbered on
    across sessions and never served twice. Returns the time split of
    :meth:`SetGenerator.timings` plus ``sets`` and ``sessions``."""
    be = backend or get_backend("cpu")
    layout = graph.layout()
    say = log or (lambda msg: None)
    with be.activate():
        gen = SetGenerator(graph, be, be.dealer_rng(seed), share_seed_rng(be, seed))
        sess = _Sessions(gen, layout, count, progress, say)
        while sess.served < count:
            chans = _accept_pair(listener, layout, timeout, say)
            sess.sessions += 1
            try:
                sess.serve(chans)
            except PeerError as e:     # a server went away: its session ends, the dealer serves the next pair
                say(f"session {sess.sessions} ended: {e.message}")
            finally:
                for ch in chans:
                    ch.close()
    return {**sess.gen.timings(), "sets": sess.served, "sessions": sess.sessions,
            "device_cache_released_bytes": sess.cache_released}


class _Sessions:
    """The dealer's state across sessions: one key-set id and pairing secret, one CSPRNG,
    the number of sets served (numbered on, never served twice)."""

    def __init__(self, gen: SetGenerator, layout, count: int, progress, say) -> None:
        self.gen, self.layout, self.count, self.progress, self.say = gen, layout, count, progress, say
        self.ksid, self.secret = new_key_set_id().hex(), new_pairing_secret()     # OS CSPRNG
        self.served = self.sessions = 0
        self.cache_released = 0     # the most device memory one set's keygen left cached (bytes)

    def serve(self, chans: list) -> None:
        """Offer, then one set per matching pair of requests, until all are served or a
        server hangs up (a set half sent when a server fails is never served again)."""
        stored = [party_layout(self.layout, p) for p in (0, 1)]     # chans[p] is party p's server
        for ch, lay in zip(chans, stored):
            ks.send_offer(ch, self.ksid, self.secret, self.count, lay.set_nbytes, self.served)
        while self.served < self.count:
            asked = [ks.read_request(ch) for ch in chans]
            if None in asked:
                self.say(f"session {self.sessions}: a server hung up; {self.served} set(s) served in all")
                return
            if asked != [self.served, self.served]:
                for ch in chans:
                    ks.refuse(ch, f"the servers asked for sets {asked[0]} and {asked[1]}; the next set is "
                                  f"{self.served}", "restart both servers together against this dealer")
                return
            index, self.served = self.served, self.served + 1
            writers = [ks.StreamSetWriter(ch, lay) for ch, lay in zip(chans, stored)]
            try:
                self.gen.write_set(index, writers)
            except BaseException:
                for w in writers:
                    w.abort()
                raise
            self.cache_released = max(self.cache_released, self.gen.release_cache())
            if self.progress:
                self.progress(self.served, self.count)
        for ch in chans:        # all served: let the servers read the last bytes and hang up first
            ks.read_request(ch)


def _accept_pair(listener, layout, timeout: float, say) -> list:
    """Accept connections until party 0 and party 1 have each said a valid hello; a
    second server claiming a party already here is told so and dropped."""
    chans: dict[int, object] = {}
    while len(chans) < 2:
        try:
            ch = listener.accept(timeout)
        except PeerError as e:      # a TLS handshake that failed (e.g. a certificate of another CA)
            if "TLS" not in e.message:
                raise
            say(f"refused a connection: {e.message}")
            continue
        hello = ks.read_hello(ch, layout)
        if hello is None:
            say("refused a connection: not a server of this build")
            continue
        if hello.party in chans:
            ks.refuse(ch, f"party {hello.party} is already connected to this dealer",
                      "start one server with --party 0 and the other with --party 1")
            continue
        chans[hello.party] = ch
    return [chans[0], chans[1]]
