"""Tasks handed to volunteers, and the one answer to "does this update match a task".

A task is bound to the volunteer's id, the round and the model it trains (the ``token``
HMAC, see ``security.TaskTokens``); the book keeps the outstanding ones by volunteer id,
so a volunteer that reconnects with its id (``resume``) can still deliver. Both run
modes issue and match through here; they differ only in when rounds open and close.

The model travels with the task: the frames that bring the volunteer from the model it
holds to the one the task trains (a delta chain or the full model, see
``core/downlink.py``) are queued just before the ``task`` frame, on the same ordered
connection. A commit only sends everyone a ``model_notice``, so an idle volunteer costs
a few hundred bytes a commit, not the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ...core.codecs import Codec
from ...core.downlink import ModelChain
from ...core.protocol import Message, encode
from ..coordinator import Coordinator
from ..security import TaskTokens
from .config import RunConfig
from .peers import Peer, PeerState, Peers
from .validation import Verdict, check

__all__ = ["Assignment", "TaskBook"]

log = logging.getLogger("webfl.engine")


@dataclass(frozen=True)
class Assignment:
    round: int
    model_version: int
    expires: float  # loop time


class TaskBook:
    def __init__(self, peers: Peers, coordinator: Coordinator, tokens: TaskTokens, chain: ModelChain) -> None:
        """``chain``: the committed model as volunteers hold it (the commit pipeline's)."""
        self._peers, self._coordinator, self.tokens, self._chain = peers, coordinator, tokens, chain
        self._jobs: dict[str, Assignment] = {}
        self._answered: set[tuple[str, int]] = set()  # (volunteer, round): one update each
        self._open: set[int] = set()

    def __len__(self) -> int:
        return len(self._jobs)

    def holds(self, peer_id: str) -> bool:
        return peer_id in self._jobs

    def outstanding(self) -> set[str]:
        return set(self._jobs)

    # -- rounds ----------------------------------------------------------------------

    def open(self, round_: int) -> None:
        self._open.add(round_)

    def close(self, keep: int | None = None) -> None:
        """Close every round but ``keep`` that has no outstanding task (all of them if ``keep`` is None)."""
        if keep is None:
            self._jobs.clear()
        busy = {job.round for job in self._jobs.values()}
        self._open = {r for r in self._open if r == keep or r in busy}
        self._answered = {(p, r) for p, r in self._answered if r in self._open}

    def expire(self, now: float) -> None:
        """Drop tasks past their deadline or whose volunteer left: the slot is free again."""
        for peer_id, job in list(self._jobs.items()):
            if peer_id not in self._peers or now > job.expires:
                del self._jobs[peer_id]

    # -- issuing ---------------------------------------------------------------------

    def catch_up(self, peer: Peer) -> list[bytes]:
        """The model frames that bring ``peer`` from the model it holds to the current one;
        from here on the server counts it as holding the current one."""
        frames = self._chain.frames_for(peer.model_version, peer.model_digest)
        peer.model_version, peer.model_digest = self._chain.version, self._chain.digest
        return frames

    async def send(
        self, peer_id: str, config: RunConfig, round_: int, model_version: int, seed: int, expires: float, clip: float | None = None,
        secagg: dict | None = None,
    ) -> int:
        """Give ``peer_id`` a task on the current model, preceded by what it lacks of that
        model; the bytes queued, or 0 if the task could not be queued.

        ``clip``: a dp run's clip norm for this round (adaptive clipping moves it);
        ``secagg``: a secure-aggregation round's parameters for this volunteer.
        """
        peer = self._peers.get(peer_id)
        if peer is None or peer.state is not PeerState.READY:
            return 0  # it left, or paused, since it was picked
        if model_version != self._chain.version:
            # A commit landed since the caller looked: the slot stays free for a task on the new model.
            log.warning("no task for %s on model %d: the committed model is now %d", peer_id, model_version, self._chain.version)
            return 0
        train = {"epochs": config.local_epochs, "batch_size": config.batch_size, "lr": config.lr, "seed": seed}
        if config.prox_mu:
            train["prox_mu"] = config.prox_mu
        task = {
            "round": round_,
            "model_version": model_version,
            "deadline_s": config.deadline_s,
            "config": train,
            "codec": config.codec.spec,
            # Bound to this connection, round and model: the update must echo it.
            "token": self.tokens.issue(peer_id, round_, model_version),
        }
        if clip is not None:
            task["clip"] = clip
        if secagg is not None:
            task["secagg"] = secagg
        frames = [*self.catch_up(peer), encode(Message("task", task))]
        for frame in frames:
            # A frame the queue refuses drops the connection (a slow consumer): nothing to undo.
            if not await self._coordinator.publish(frame, to=[peer_id]):
                return 0
        if self._peers.get(peer_id) is not peer:
            return 0  # it left while its frames went out: no task to wait for
        self.open(round_)
        self._jobs[peer_id] = Assignment(round_, model_version, expires)
        if peer.state is PeerState.READY:  # one that paused meanwhile stays paused; its update still counts
            self._peers.to(peer, PeerState.TRAINING)
        return sum(map(len, frames))

    # -- matching --------------------------------------------------------------------

    def match(self, peer_id: str, msg: Message) -> Assignment | Verdict:
        """The task this update answers, or why it answers none.

        Only a match: the token, codec and contents are ``validation``'s job.
        """
        round_ = msg["round"]
        job = self._jobs.get(peer_id)
        if job is None or job.round != round_:
            if round_ not in self._open:
                opened = ", ".join(map(str, sorted(self._open)))
                current = f"round {opened} is open" if opened else "no round is open"
                return Verdict(False, f"round {round_} is not open for updates ({current})", "round")
            if (peer_id, round_) in self._answered:
                return Verdict(False, f"duplicate update for round {round_}", "duplicate")
            return Verdict(False, f"not selected for round {round_} (or its task expired)", "not_selected")
        if msg["model_version"] != job.model_version:
            return Verdict(False, f"update is based on model {msg['model_version']}, round {round_} trains model {job.model_version}", "model_version")
        return job

    def vet(self, peer_id: str, msg: Message, codec: Codec) -> Assignment | Verdict:
        """``match``, then the checks every mode makes (token, codec, example count)."""
        job = self.match(peer_id, msg)
        if isinstance(job, Verdict):
            return job
        token_ok = self.tokens.check(peer_id, job.round, job.model_version, msg["token"])
        return check(token_ok, msg, codec) or job

    def expect(self, peer_id: str, round_: int, model_version: int) -> None:
        """Vet updates for a task issued elsewhere (a cluster follower's book of the leader's round)."""
        self.open(round_)
        self._jobs[peer_id] = Assignment(round_, model_version, float("inf"))

    def withdraw(self, peer_id: str) -> None:
        """Drop the task without an answer: the member that held it closed its share of the round."""
        self._jobs.pop(peer_id, None)

    def answered(self, peer_id: str) -> None:
        """The task is done (accepted, or refused for good): its slot is free."""
        job = self._jobs.pop(peer_id)
        self._answered.add((peer_id, job.round))
