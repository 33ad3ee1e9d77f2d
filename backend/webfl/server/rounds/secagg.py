"""Synchronous rounds under secure aggregation (SecAgg+, docs/secagg.md): the server
commits the mean of a round's updates having seen only their masked sum.

A round selects like ``sync``, then runs the stages of ``server/secagg/session.py``, each
with a deadline (docs/protocol.md): the task carries the round's public SecAgg parameters
and the volunteer answers with its keys (ADVERTISE, ``stage_s``); rosters out, sealed
shares in (SHARE, ``stage_s``); inboxes out, then each volunteer trains, quantizes, masks
and uploads (UPLOAD, ``deadline_s``); the survivors are told who survived and reveal
shares (UNMASK, ``stage_s``). A stage ends at its deadline or once every volunteer still
connected has answered. The unmasked sum of levels is decoded, divided by the survivors'
count (every update weighs the same: counts stay hidden too) or, in a dp run, noised and
divided by the expected cohort like any dp release, then committed. Fewer than
``min_updates`` survivors, a cohort too small for the threshold, or secrets that cannot
be rebuilt abandon the round (recorded, model unchanged, retried).

Every SecAgg frame comes through ``secagg_frame``; one that is malformed, out of stage
or from outside the cohort is refused (the socket closes with the reason: 1013 "try
later" for a frame that is merely late or early, 1008 otherwise) and changes nothing. ``update`` frames are refused: no update travels in the clear in such a run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import numpy as np

from ...core.aggregation import Aggregator
from ...core.codecs import Codec, Encoded
from ...core.protocol import CLOSE_POLICY, CLOSE_TRY_LATER, Message, ProtocolError, encode
from ...core.secagg import OutOfStage, SecAggError
from ...core.secagg.native import X25519Agreement
from ..privacy.run import DPRule
from ..secagg import SecAggSession
from .seeds import task_seed
from .state import RoundState
from .sync import SyncRounds, _OpenRound
from .validation import Verdict

__all__ = ["SecAggRounds", "UnmaskedMean"]

log = logging.getLogger("webfl.engine")

AGREEMENT = X25519Agreement()


class UnmaskedMean(Aggregator):
    """FedAvg over an unmasked sum: the mean of the round's updates, each weighing one."""

    name = "secagg"

    def add_sum(self, total: np.ndarray, count: int) -> None:
        if not self._open:
            raise ValueError("secagg: no round in progress; call begin() first")
        self._sum, self.count, self.total_weight = total, count, float(count)

    def _start(self) -> None:
        self._sum: np.ndarray | None = None

    def _add(self, codec: Codec, enc: Encoded, weight: float) -> float | None:
        raise ValueError("a secure-aggregation round never takes an update in the clear")

    def _finish(self) -> np.ndarray:
        assert self._sum is not None
        return (self._sum / self.count).astype(np.float32)

    def _release(self) -> None:
        self._sum = None


class SecAggRounds(SyncRounds):
    name = "secagg"

    def __init__(self, services, run) -> None:
        super().__init__(services, run)
        self.session: SecAggSession | None = None
        self._stage_deadline = 0.0  # loop time the current stage ends at, for the status

    async def _round(self) -> bool:
        s, config = self.services, self.config
        settings = config.secagg
        assert settings is not None
        selected, open_ = await self._select(longer_by_s=3 * settings.stage_s)
        round_, version, funnel = open_.round, open_.model_version, open_.funnel
        size = s.commits.model.size
        dp = isinstance(self.run.rule, DPRule)
        clip = self.run.clip if dp else settings.clip
        assert clip is not None
        try:
            params = settings.for_round(len(selected), size, clip, dp)
            if len(selected) < max(config.min_updates, params.threshold + 1):
                raise ValueError(f"{len(selected)} selected, a round needs {max(config.min_updates, params.threshold + 1)}")
        except ValueError as exc:
            log.warning("secagg round %d abandoned before it began: %s", round_, exc)
            self._close()
            await self._abandon(open_, "secagg_cohort")
            return False
        session = self.session = SecAggSession(round_, selected, params, size, AGREEMENT)
        s.tasks.open(round_)
        for i, peer_id in enumerate(selected):
            sent = await s.tasks.send(peer_id, config, round_, version, task_seed(s.seed, round_, i), open_.deadline,
                                      self.run.clip, secagg=session.task_fields(peer_id))
            open_.bytes_down += sent
            funnel.task_sent(peer_id, sent > 0)
        log.info("secagg round %d: selected %d volunteer(s), k=%d, t=%d, b=%d", round_, len(selected), params.neighbors,
                 params.threshold, params.quantizer.bits)
        s.phase.to(RoundState.TRAINING)
        # ADVERTISE -> SHARE -> UPLOAD -> UNMASK, each to its deadline or until all live parties answered.
        await self._stage(lambda: session.keys.keys(), session.cohort, settings.stage_s)
        await self._send(session.rosters())
        await self._drop(range(session.n), session.roster, "too few of its neighbours advertised keys in time")
        await self._stage(lambda: session.sealed.keys(), [session.cohort[u] for u in session.roster], settings.stage_s)
        await self._send(session.inboxes())
        await self._drop(session.roster, session.inbox, "too few of its neighbours shared their secrets in time")
        await self._stage(lambda: session.examples.keys(), [session.cohort[u] for u in session.inbox], config.deadline_s)
        await self._drop(session.inbox, session.examples, "the masked upload stage closed")
        funnel.close(self._training())
        self.services.tasks.close()
        if len(session.examples) < config.min_updates:
            return await self._give_up(open_, "too_few_updates", f"{len(session.examples)} masked update(s), {config.min_updates} needed")
        await self._send(session.close())
        await self._stage(lambda: session.reveals.keys(), [session.cohort[u] for u in session.survivors], settings.stage_s)
        log.info("secagg round %d: %d of %d survivors revealed their shares", round_, len(session.reveals), len(session.survivors))
        self.session = None  # the unmask stage is over: a late reveal now finds no round, not a half-read one
        try:
            total = await asyncio.to_thread(session.finish)
            decoded = params.quantizer.decode_sum(total, len(session.survivors))
        except (SecAggError, ValueError) as exc:
            return await self._give_up(open_, "unmask_failed", str(exc))
        rule = self.run.rule if dp else UnmaskedMean()
        rule.begin(size, len(session.survivors))
        rule.add_sum(decoded, len(session.survivors))
        self._open = self.session = None
        return await self._commit(rule, open_)

    async def _give_up(self, open_: _OpenRound, why: str, detail: str) -> bool:
        log.warning("secagg round %d abandoned (%s): %s; global model unchanged", open_.round, why, detail)
        self.run.rule.abort()
        self._close()
        await self._abandon(open_, why)
        return False

    def _close(self) -> None:
        super()._close()
        self.session = None

    async def _drop(self, before: Iterable[int], kept: Iterable[int], why: str) -> None:
        """Tell the volunteers a stage left out (their task is over) why, so they are ready again."""
        session, kept = self.session, set(kept)
        assert session is not None
        gone = [session.cohort[u] for u in before if u not in kept]
        for peer in (p for p in gone if p in self.services.peers):
            reason = f"secure aggregation round {session.round}: dropped, {why}"
            await self.services.coordinator.publish(encode(Message("reject", {"reason": reason, "round": session.round})), to=[peer])

    async def _stage(self, answered: Callable[[], Iterable[int]], expected: list[str], timeout: float) -> None:
        """Until every volunteer in ``expected`` still connected has answered, or ``timeout``."""
        s, session = self.services, self.session
        assert session is not None
        loop = asyncio.get_running_loop()
        deadline = self._stage_deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            done = {session.cohort[u] for u in answered()}
            if all(p in done or p not in s.peers for p in expected):
                return
            await s.phase.wait_change(remaining)

    async def _send(self, frames: dict[str, Message]) -> None:
        open_ = self._open
        for peer_id, msg in frames.items():
            frame = encode(msg)
            if await self.services.coordinator.publish(frame, to=[peer_id]) and open_ is not None:
                open_.bytes_down += len(frame)

    def submit(self, peer_id: str, msg: Message, nbytes: int) -> Verdict:
        return Verdict(False, "this run uses secure aggregation: updates travel masked (sa_masked), never in the clear", "malformed")

    async def secagg_frame(self, peer_id: str, msg: Message, nbytes: int) -> ProtocolError | None:
        session, open_ = self.session, self._open
        if session is None or open_ is None:
            return ProtocolError(f"{msg.type}: no secure-aggregation round is open", CLOSE_TRY_LATER)
        try:
            if msg.type == "sa_keys":
                session.advertise(peer_id, msg)
            elif msg.type == "sa_shares":
                session.share(peer_id, msg)
            elif msg.type == "sa_masked":
                if (refused := self._masked(peer_id, msg, nbytes)) is not None:
                    return ProtocolError(*refused)
                await self.services.coordinator.publish(encode(Message("accept", {"round": open_.round})), to=[peer_id])
            elif msg.type == "sa_reveal":
                session.reveal(peer_id, msg)
            else:
                return ProtocolError(f"{msg.type} is a server's frame", CLOSE_POLICY)
        except SecAggError as exc:
            log.info("secagg round %d: %s from %s refused: %s", session.round, msg.type, peer_id, exc)
            # A late frame's sender may come back for the next round; a malformed one's may not.
            return ProtocolError(str(exc), CLOSE_TRY_LATER if isinstance(exc, OutOfStage) else CLOSE_POLICY)
        self.services.phase.changed()
        return None

    def _masked(self, peer_id: str, msg: Message, nbytes: int) -> tuple[str, int] | None:
        """Fold a masked upload once its task, token and size check out; the reason and close code if not."""
        s, session, open_ = self.services, self.session, self._open
        assert session is not None and open_ is not None
        session.check_upload(peer_id, msg)
        job = s.tasks.match(peer_id, msg)
        if isinstance(job, Verdict):
            return f"sa_masked: {job.reason}", CLOSE_TRY_LATER if job.kind in ("round", "model_version") else CLOSE_POLICY
        if not s.tasks.tokens.check(peer_id, job.round, job.model_version, msg["token"]):
            return "sa_masked: the session token does not match this connection's task", CLOSE_POLICY
        session.upload(peer_id, msg)
        open_.funnel.report(peer_id)
        self._count(open_, peer_id, msg["num_examples"], nbytes, "masked update")
        return None

    def open_round(self) -> dict | None:
        out = super().open_round()
        if out is not None and self.session is not None:
            remaining = self._stage_deadline - asyncio.get_running_loop().time()
            out["secagg"] = self.session.describe() | {"stage_deadline_in_s": max(0.0, remaining)}
        return out
