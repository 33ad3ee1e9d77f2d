"""Tasks handed to volunteers, and the one answer to "does this update match a task".

A task is bound to the volunteer's id, the round and the model it trains (the ``token``
HMAC, see ``security.TaskTokens``); the book keeps the outstanding ones by volunteer id,
so a volunteer that reconnects with its id (``resume``) can still deliver. Both run
modes issue and match through here; they differ only in when rounds open and close.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...core.codecs import Codec
from ...core.protocol import Message, encode
from ..coordinator import Coordinator
from ..security import TaskTokens
from .config import RunConfig
from .peers import PeerState, Peers
from .validation import Verdict, check

__all__ = ["Assignment", "TaskBook"]


@dataclass(frozen=True)
class Assignment:
    round: int
    model_version: int
    expires: float  # loop time


class TaskBook:
    def __init__(self, peers: Peers, coordinator: Coordinator, tokens: TaskTokens) -> None:
        self._peers, self._coordinator, self.tokens = peers, coordinator, tokens
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

    async def send(
        self, peer_id: str, config: RunConfig, round_: int, model_version: int, seed: int, expires: float, clip: float | None = None
    ) -> int:
        """Give ``peer_id`` a task; the frame's size, or 0 if it could not be queued.

        ``clip``: a dp run's clip norm for this round (adaptive clipping moves it).
        """
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
        frame = encode(Message("task", task))
        if not await self._coordinator.publish(frame, to=[peer_id]):
            return 0
        self.open(round_)
        self._jobs[peer_id] = Assignment(round_, model_version, expires)
        peer = self._peers.get(peer_id)
        if peer is not None:
            self._peers.to(peer, PeerState.TRAINING)
        return len(frame)

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

    def answered(self, peer_id: str) -> None:
        """The task is done (accepted, or refused for good): its slot is free."""
        job = self._jobs.pop(peer_id)
        self._answered.add((peer_id, job.round))
