"""One SecAgg+ round on the server, sans-I/O: the stages, what each accepts, what it routes.

::

    ADVERTISE --rosters()--> SHARE --inboxes()--> UPLOAD --close()--> UNMASK --finish()--> DONE

ADVERTISE takes each cohort member's two public keys; ``rosters`` gives each advertiser
its advertising neighbours' keys (one with fewer than t has nobody to share with and is
out). SHARE takes each roster holder's sealed share frames, exactly one per roster
neighbour; ``inboxes`` routes them, unread (the server holds no channel key), and fixes
who masks with whom for the core's ``Unmasker``. UPLOAD folds each masked vector into the
running sum as it arrives (the server never holds one in the clear); ``close`` fixes the
survivors. UNMASK takes each survivor's reveals; ``finish`` rebuilds the secrets and
unmasks the sum. A frame from outside the cohort, for another stage, a second time, or
malformed raises ``SecAggError`` and changes nothing (``OutOfStage`` for a well-formed frame
that is merely late or early: its sender may reconnect and try the next round). Who misses a stage's deadline is
dropped from that stage on; the run mode (``rounds/secagg.py``) keeps the deadlines.
"""

from __future__ import annotations

import enum
import logging
import os
import secrets
from collections.abc import Sequence

import numpy as np

from ...core.protocol import Message
from ...core.secagg import KeyAgreement, NeighbourGraph, OutOfStage, PublicKeys, Reveal, RoundSetup, SecAggError, Unmasker
from ...core.secagg.packing import packed_size
from ...core.secagg.wire import (
    MAX_SESSION, id_rows, read_id_rows, read_keys, read_reveal, roster_message, setup_fields, unmask_message,
)
from .settings import RoundParams

__all__ = ["SecAggSession", "Stage"]

log = logging.getLogger("webfl.secagg")


class Stage(str, enum.Enum):
    ADVERTISE = "advertise"
    SHARE = "share"
    UPLOAD = "upload"
    UNMASK = "unmask"
    DONE = "done"


#: The frame each stage accepts from a volunteer.
ACCEPTS = {Stage.ADVERTISE: "sa_keys", Stage.SHARE: "sa_shares", Stage.UPLOAD: "sa_masked", Stage.UNMASK: "sa_reveal"}


class SecAggSession:
    """The server's side of one round: ``cohort`` are the selected volunteers' ids, in index order."""

    def __init__(self, round_: int, cohort: Sequence[str], params: RoundParams, size: int, agreement: KeyAgreement) -> None:
        self.round, self.params, self.agreement = round_, params, agreement
        self.cohort = list(cohort)
        self.index = {peer: u for u, peer in enumerate(self.cohort)}
        # Fresh from the OS each attempt: frames of an abandoned attempt never fit its retry.
        graph = NeighbourGraph(len(self.cohort), params.neighbors, os.urandom(32))
        self.setup = RoundSetup(secrets.randbelow(MAX_SESSION), size, params.quantizer.bits, params.threshold, graph)
        self.session = self.setup.round_id
        self.stage = Stage.ADVERTISE
        self.keys: dict[int, PublicKeys] = {}
        self.roster: dict[int, frozenset[int]] = {}
        self.sealed: dict[int, dict[int, bytes]] = {}  # sender -> receiver -> sealed frame
        self.inbox: dict[int, frozenset[int]] = {}  # receiver -> senders
        self.unmasker: Unmasker | None = None
        self.survivors: frozenset[int] = frozenset()
        self.reveals: dict[int, Reveal] = {}
        self.examples: dict[int, int] = {}

    @property
    def n(self) -> int:
        return len(self.cohort)

    def task_fields(self, peer: str) -> dict:
        """The ``task`` frame's ``secagg`` field for ``peer``."""
        return setup_fields(self.setup, self.params.quantizer, self.index[peer])

    def _move(self, expected: Stage, to: Stage) -> None:
        if self.stage is not expected:
            raise SecAggError(f"secagg round {self.round} is at stage {self.stage.value}, not {expected.value}")
        log.info("secagg round %d: %s -> %s", self.round, self.stage.value, to.value,
                 extra={"event": "secagg_stage", "from": self.stage.value, "to": to.value})
        self.stage = to

    def _sender(self, peer: str, msg: Message) -> int:
        """The cohort index of ``peer`` if ``msg`` belongs to this session and its stage."""
        if msg["session"] != self.session:
            raise OutOfStage(f"{msg.type} for secagg session {msg['session']}, not the open one")
        if peer not in self.index:
            raise SecAggError(f"{msg.type}: this volunteer is not in secagg round {self.round}'s cohort")
        if ACCEPTS.get(self.stage) != msg.type:
            raise OutOfStage(f"{msg.type} out of stage: secagg round {self.round} is at stage {self.stage.value}")
        return self.index[peer]

    # -- ADVERTISE ------------------------------------------------------------------

    def advertise(self, peer: str, msg: Message) -> None:
        u = self._sender(peer, msg)
        if u in self.keys:
            raise SecAggError("sa_keys: this volunteer advertised its keys already")
        keys = read_keys(msg)
        known = {k for pk in self.keys.values() for k in (pk.channel, pk.masking)}
        if keys.channel == keys.masking or {keys.channel, keys.masking} & known:
            raise SecAggError("sa_keys: a public key repeats (its own other key or another volunteer's)")
        self.keys[u] = keys

    def rosters(self) -> dict[str, Message]:
        """End ADVERTISE: the ``sa_roster`` frame of each advertiser that has t advertising neighbours."""
        self._move(Stage.ADVERTISE, Stage.SHARE)
        t, out = self.setup.threshold, {}
        for u in sorted(self.keys):
            roster = frozenset(v for v in self.setup.graph.neighbours(u) if v in self.keys)
            if len(roster) >= t:
                self.roster[u] = roster
                out[self.cohort[u]] = roster_message(self.session, {v: self.keys[v] for v in roster})
        return out

    # -- SHARE ----------------------------------------------------------------------

    def share(self, peer: str, msg: Message) -> None:
        u = self._sender(peer, msg)
        if u not in self.roster:
            raise SecAggError("sa_shares: this volunteer got no roster (too few of its neighbours advertised)")
        if u in self.sealed:
            raise SecAggError("sa_shares: this volunteer sent its shares already")
        rows = read_id_rows(msg, self.n)
        if set(rows) != self.roster[u]:
            raise SecAggError("sa_shares: one sealed share for each neighbour in the roster, and for no one else")
        self.sealed[u] = rows

    def inboxes(self) -> dict[str, Message]:
        """End SHARE: each sharer's ``sa_inbox`` (the frames sealed for it by sharing
        neighbours), for those that got at least t; the ``Unmasker`` knows who got what."""
        self._move(Stage.SHARE, Stage.UPLOAD)
        t, out = self.setup.threshold, {}
        for u in sorted(self.sealed):
            senders = frozenset(v for v in self.roster[u] if v in self.sealed)
            if len(senders) >= t:
                self.inbox[u] = senders
                out[self.cohort[u]] = id_rows("sa_inbox", self.session, {v: self.sealed[v][u] for v in senders})
        self.sealed.clear()  # routed: the server keeps nothing it cannot read anyway
        self.unmasker = Unmasker(self.setup, self.agreement, self.keys, self.inbox)
        return out

    # -- UPLOAD ---------------------------------------------------------------------

    def check_upload(self, peer: str, msg: Message) -> int:
        """The sender's index if ``msg`` is a masked upload this stage can fold (nothing changes)."""
        u = self._sender(peer, msg)
        if u not in self.inbox:
            raise SecAggError("sa_masked: this volunteer got no shares to mask with")
        if u in self.examples:
            raise SecAggError("sa_masked: this volunteer uploaded its masked update already")
        if len(msg.arrays) != 1 or msg.arrays[0].dtype != np.uint8 or msg.arrays[0].shape != (packed_size(self.setup.size, self.setup.bits),):
            raise SecAggError(f"sa_masked: one uint8 vector of {packed_size(self.setup.size, self.setup.bits)} bytes"
                              f" ({self.setup.size} values at {self.setup.bits} bits)")
        return u

    def upload(self, peer: str, msg: Message) -> None:
        u = self.check_upload(peer, msg)
        assert self.unmasker is not None
        self.unmasker.add(u, msg.arrays[0].tobytes())
        self.examples[u] = msg["num_examples"]

    def close(self) -> dict[str, Message]:
        """End UPLOAD: the survivors, and the ``sa_unmask`` frame each of them gets."""
        self._move(Stage.UPLOAD, Stage.UNMASK)
        assert self.unmasker is not None
        self.survivors = self.unmasker.close()
        frame = unmask_message(self.session, self.survivors)
        return {self.cohort[u]: frame for u in sorted(self.survivors)}

    # -- UNMASK ---------------------------------------------------------------------

    def reveal(self, peer: str, msg: Message) -> None:
        u = self._sender(peer, msg)
        if u not in self.survivors:
            raise SecAggError("sa_reveal: this volunteer did not upload a masked update")
        if u in self.reveals:
            raise SecAggError("sa_reveal: this volunteer revealed its shares already")
        reveal = read_reveal(msg, self.n)
        held = self.inbox[u]
        if set(reveal.self_seeds) != held & self.survivors or set(reveal.secret_keys) != held - self.survivors:
            raise SecAggError("sa_reveal: a share of each surviving neighbour's self seed and each dropped one's masking key, no other")
        self.reveals[u] = reveal

    def finish(self) -> np.ndarray:
        """The unmasked sum of the survivors' levels (uint32); ``SecAggError`` (the stage kept) if it cannot be rebuilt."""
        assert self.unmasker is not None
        if self.stage is not Stage.UNMASK:
            raise SecAggError(f"secagg round {self.round} is at stage {self.stage.value}, not unmask")
        total = self.unmasker.finish(self.reveals)
        self._move(Stage.UNMASK, Stage.DONE)
        return total

    def describe(self) -> dict:
        """The open round's SecAgg progress for the status."""
        return {
            "stage": self.stage.value, "cohort": self.n, "neighbors": self.setup.graph.k, "threshold": self.setup.threshold,
            "bits": self.setup.bits, "advertised": len(self.keys), "shared": len(self.sealed) if self.stage is Stage.SHARE else len(self.inbox),
            "uploaded": len(self.examples), "revealed": len(self.reveals), "survivors": self.survivors_so_far,
        }

    @property
    def survivors_so_far(self) -> int:
        """How many of the cohort are still in the round: each stage keeps those the last one kept."""
        if self.stage is Stage.ADVERTISE:
            return self.n
        if self.stage is Stage.SHARE:
            return len(self.roster)
        if self.stage is Stage.UPLOAD:
            return len(self.inbox)
        return len(self.survivors)
