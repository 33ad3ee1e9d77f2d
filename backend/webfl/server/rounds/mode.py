"""The interface a run mode implements, and the public services it may use.

A mode drives one run from start to its last commit. It picks volunteers through
``Selection``, hands out and matches tasks through ``TaskBook`` (``vet``), folds updates
with ``validation.fold`` and commits through ``CommitPipeline``; the engine counts every
refused update once. New modes (secure aggregation, ...) plug in the same way: a module
with a ``RunMode`` subclass, listed in ``engine.MODES``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from ...core.protocol import CLOSE_TRY_LATER, Message, ProtocolError
from ..coordinator import Coordinator
from .commit import CommitPipeline, Run
from .config import RunConfig
from .funnel import RoundStats
from .peers import Peers
from .selection import Selection
from .shares import Share, Sharing
from .state import Phase
from .tasks import TaskBook
from .validation import Rejections, Verdict

__all__ = ["RunMode", "Services"]


@dataclass(frozen=True)
class Services:
    phase: Phase
    peers: Peers
    selection: Selection
    tasks: TaskBook
    commits: CommitPipeline
    rejections: Rejections
    stats: RoundStats
    seed: int
    coordinator: Coordinator
    sharing: Sharing


class RunMode(ABC):
    name: ClassVar[str]

    def __init__(self, services: Services, run: Run) -> None:
        self.services, self.run, self.config = services, run, run.config

    @staticmethod
    @abstractmethod
    def max_updates(config: RunConfig) -> int:
        """The most updates the rule holds at once (its memory is checked at launch)."""

    @staticmethod
    @abstractmethod
    def cohort(config: RunConfig) -> tuple[int, int]:
        """The most and the fewest updates one commit aggregates (robust rules check it at launch)."""

    @abstractmethod
    async def drive(self) -> None:
        """Run until ``run.finished``; cancelled by ``stop()``."""

    @abstractmethod
    def submit(self, peer_id: str, msg: Message, nbytes: int) -> Verdict:
        """The verdict on one ``update``; an accepted one is folded in."""

    async def secagg_frame(self, peer_id: str, msg: Message, nbytes: int) -> ProtocolError | None:
        """Handle one secure-aggregation frame (``sa_*``); why it is refused (the close code and reason), or None."""
        return ProtocolError(f"{msg.type}: this run does not use secure aggregation", CLOSE_TRY_LATER)

    def merge_share(self, share: Share) -> str | None:
        """Merge a follower's share of the open round; why it was refused, or None."""
        return f"a {self.name} run folds no shares"

    def refused_elsewhere(self, peer_id: str, round_: int, kind: str) -> None:
        """A cluster follower refused ``peer_id``'s update of ``round_`` at its edge (the engine's
        rejections counted it already): the open round's funnel counts it too."""

    def open_round(self) -> dict | None:
        """The open round for the status (``round``, ``selected``, ``received``, ``deadline``, ``funnel``), if any."""
        return None

    def describe(self) -> dict | None:
        """Mode-specific status (FedBuff's buffer), if any."""
        return None
