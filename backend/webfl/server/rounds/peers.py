"""The connected volunteers as the server sees them: one ``PeerState`` machine each."""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum

from .state import Phase

__all__ = ["MOVES", "Peer", "PeerState", "Peers"]

log = logging.getLogger("webfl.engine")


class PeerState(str, Enum):
    CONNECTED = "connected"  # said hello; no model or no data yet
    READY = "ready"  # can be selected
    TRAINING = "training"  # given a task; busy until it reports ready again
    PAUSED = "paused"
    WAITING = "waiting"  # told to come back later (pace steering); ready again at wait_until


_P = PeerState
#: A volunteer's ``ready`` and ``pause`` come in any state, so READY and PAUSED are reached
#: from every other; a task (TRAINING) and a wait (WAITING) go only to one that is ready.
#: ``Peers.to`` refuses any other move.
MOVES: dict[PeerState, frozenset[PeerState]] = {
    _P.CONNECTED: frozenset({_P.READY, _P.PAUSED}),
    _P.READY: frozenset({_P.TRAINING, _P.WAITING, _P.PAUSED}),
    _P.TRAINING: frozenset({_P.READY, _P.PAUSED}),
    _P.WAITING: frozenset({_P.READY, _P.PAUSED}),
    _P.PAUSED: frozenset({_P.READY}),
}


@dataclass
class Peer:
    id: str
    agent: str
    address: str
    #: Codec stages the volunteer advertised in ``hello`` (the protocol requires the list).
    codecs: frozenset[str]
    state: PeerState = PeerState.CONNECTED
    num_examples: int = 0
    connected_at: float = field(default_factory=time.time)
    refused_codecs: set[str] = field(default_factory=set, repr=False)  # logged once each
    wait_until: float = 0.0  # loop time, while WAITING
    #: The model this connection was brought to (``None``: unknown, it gets the full one).
    model_version: int | None = None
    model_digest: str | None = None


class Peers:
    """The registry of live connections; every state change signals the ``Phase``.

    Also indexed by state, each state's ids kept sorted, and the codec sets advertised are
    counted: a round asks for the ready ones (and counts states) several times, and with
    10,000 idle connections a scan and sort of all of them was most of a short round's CPU
    on the server (docs/scale.md, run 5).
    """

    def __init__(self, phase: Phase) -> None:
        self._phase = phase
        self._peers: dict[str, Peer] = {}
        self._sorted: dict[PeerState, list[str]] = {state: [] for state in PeerState}
        self._codec_sets: Counter[frozenset[str]] = Counter()

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[Peer]:
        return iter(list(self._peers.values()))

    def get(self, peer_id: str) -> Peer | None:
        return self._peers.get(peer_id)

    def add(self, peer_id: str, agent: str, address: str, codecs: list) -> Peer:
        if peer_id in self._peers:
            raise ValueError(f"volunteer {peer_id} is already connected")
        peer = self._peers[peer_id] = Peer(peer_id, agent, address, frozenset(c for c in codecs if isinstance(c, str)))
        self._codec_sets[peer.codecs] += 1
        self._file(peer)
        self._phase.changed()
        return peer

    def remove(self, peer_id: str) -> bool:
        if (peer := self._peers.pop(peer_id, None)) is None:
            return False
        self._unfile(peer)
        self._codec_sets[peer.codecs] -= 1
        if not self._codec_sets[peer.codecs]:
            del self._codec_sets[peer.codecs]
        log.info("volunteer %s disconnected", peer_id)
        self._phase.changed()
        return True

    def to(self, peer: Peer, new: PeerState) -> None:
        """Move ``peer`` to ``new``; nothing for one that left (its caller awaited a send meanwhile)."""
        if self._peers.get(peer.id) is not peer:
            return
        if new is not peer.state:
            if new not in MOVES[peer.state]:
                raise RuntimeError(f"volunteer {peer.id}: no move from {peer.state.value} to {new.value}")
            log.info("volunteer %s: %s -> %s", peer.id, peer.state.value, new.value,
                     extra={"event": "volunteer_state", "volunteer": peer.id, "from": peer.state.value, "to": new.value})
            self._unfile(peer)
            peer.state = new
            self._file(peer)
            self._phase.changed()

    def ready(self, peer_id: str, num_examples: int, now: float) -> None:
        """A volunteer reports ready; one told to wait stays WAITING until its time is up."""
        peer = self._peers[peer_id]
        peer.num_examples = num_examples
        if peer.state is PeerState.WAITING and now < peer.wait_until:
            return
        self.to(peer, PeerState.READY)

    def wait(self, peer_id: str, until: float) -> None:
        """A ready volunteer was told to come back at ``until``. One no longer ready (the wait
        went out after its task, its pause, or a reconnection) keeps its state."""
        if (peer := self._peers.get(peer_id)) is None or peer.state is not PeerState.READY:
            return
        peer.wait_until = until
        self.to(peer, PeerState.WAITING)

    def wake(self, now: float) -> None:
        """Volunteers whose wait is over are ready again."""
        for peer in self.of_state(PeerState.WAITING):
            if now >= peer.wait_until:
                self.to(peer, PeerState.READY)

    def count(self, state: PeerState) -> int:
        return len(self._sorted[state])

    def in_state(self, state: PeerState) -> list[str]:
        """The ids in ``state``, sorted."""
        return list(self._sorted[state])

    def of_state(self, state: PeerState) -> list[Peer]:
        """The volunteers in ``state``, by id."""
        return [self._peers[peer_id] for peer_id in self._sorted[state]]

    def codec_sets(self) -> set[frozenset[str]]:
        """The distinct codec sets the volunteers connected advertised."""
        return set(self._codec_sets)

    def _file(self, peer: Peer) -> None:
        bisect.insort(self._sorted[peer.state], peer.id)

    def _unfile(self, peer: Peer) -> None:
        ids = self._sorted[peer.state]
        del ids[bisect.bisect_left(ids, peer.id)]
