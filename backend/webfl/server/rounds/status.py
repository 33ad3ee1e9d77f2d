"""What the engine reports: the admin status (``GET /api/status``) and the volunteers' ``status`` frame."""

from __future__ import annotations

import asyncio

from ...core.protocol import Message, encode
from ...core.tasks import Task
from .announce import history_fields
from .commit import CommitPipeline, Run
from .funnel import RoundStats
from .mode import RunMode
from .peers import PeerState, Peers
from .selection import Selection
from .state import Phase
from .validation import Rejections

__all__ = ["status", "status_fields", "status_frame"]


def status(
    task: Task, phase: Phase, peers: Peers, commits: CommitPipeline, selection: Selection, rejections: Rejections,
    stats: RoundStats, run: Run | None, running: bool, mode: RunMode | None,
) -> dict:
    open_ = mode.open_round() if mode else None
    now = asyncio.get_running_loop().time()
    waiting = selection.waiting
    return {
        "state": phase.state.value,
        "task": task.to_dict(),
        "model_version": commits.model_version,
        "round": open_["round"] if open_ else None,
        "connected": len(peers),
        "volunteers": {s.value: peers.count(s) for s in PeerState},
        "run": None
        if run is None
        else {
            "id": run.id, "running": running, "rounds_done": run.rounds_done, "config": run.config.to_dict(),
            # dp runs: the guarantee so far (``server/privacy/run.py``); null: not private.
            "privacy": None if run.privacy is None else run.privacy.status(),
        },
        "waits_sent": selection.waits_sent,
        "fedbuff": mode.describe() if mode else None,
        "open_round": None
        if open_ is None
        else {
            "round": open_["round"],
            "selected": open_["selected"],
            "received": open_["received"],
            "deadline_in_s": max(0.0, open_["deadline"] - now),
            "funnel": open_["funnel"],
            # Secure aggregation's stage, survivors so far and stage deadline; null otherwise.
            "secagg": open_.get("secagg"),
        },
        # While a round waits for volunteers: for how many, and the same in words.
        "waiting_for": None if waiting is None else waiting.to_dict(now),
        "hint": None if waiting is None else waiting.hint(now),
        "engine": stats.to_dict(),
        "rejections": rejections.to_dict(),
        "history": [r.to_dict() for r in commits.history],
    }


def status_fields(phase: Phase, peers: Peers, commits: CommitPipeline, mode: RunMode | None, run: Run | None, ended: str | None = None) -> dict:
    """What every volunteer sees but the history: the engine's state, the model, and the
    run's progress (``run``: rounds committed and rounds planned, so a page can say "round
    3 of 5"; ``ended``: why the run ended, one of ``protocol.RUN_ENDS``, or null while it runs)."""
    open_ = mode.open_round() if mode else None
    return {
        "state": phase.state.value,
        "round": open_["round"] if open_ else commits.model_version,
        "model_version": commits.model_version,
        "connected": len(peers),
        "run": [run.rounds_done, run.config.rounds] if run else None,
        # What the page states in words: the run's guarantee, or null (not private).
        "privacy": run.privacy.frame() if run and run.privacy else None,
        "ended": ended,
    }


def status_frame(
    phase: Phase, peers: Peers, commits: CommitPipeline, mode: RunMode | None, run: Run | None, ended: str | None = None
) -> bytes:
    """The full ``status`` frame (welcome, a run's start and end): the fields and the kept history."""
    return encode(Message("status", {**status_fields(phase, peers, commits, mode, run, ended), **history_fields(commits.history)}))
