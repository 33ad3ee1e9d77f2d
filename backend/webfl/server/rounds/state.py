"""The round engine's state machine and the one event every service signals changes on.

::

    IDLE --start()--> SELECTING --enough ready volunteers--> TRAINING
      ^                  ^                                      |
      |                  +--- too few updates by deadline ------+ (abandoned: model unchanged, retried)
      |                                                         v
      +---- last round / stop() ---- BROADCASTING <------- AGGREGATING

FedBuff runs go TRAINING -> AGGREGATING -> BROADCASTING -> TRAINING (no selection barrier).
A refused aggregate goes back to SELECTING (sync: the round is retried) or TRAINING
(FedBuff); a stop, a failure or the run's end goes to IDLE from anywhere. ``MOVES`` is
that diagram; any other move is a bug, and ``Phase.to`` refuses it.
"""

from __future__ import annotations

import asyncio
import logging
from enum import Enum

__all__ = ["MOVES", "Phase", "RoundState"]

log = logging.getLogger("webfl.engine")


class RoundState(str, Enum):
    IDLE = "idle"
    SELECTING = "selecting"
    TRAINING = "training"
    AGGREGATING = "aggregating"
    BROADCASTING = "broadcasting"


_R = RoundState
MOVES: dict[RoundState, frozenset[RoundState]] = {
    _R.IDLE: frozenset({_R.SELECTING, _R.TRAINING}),
    _R.SELECTING: frozenset({_R.TRAINING, _R.IDLE}),
    _R.TRAINING: frozenset({_R.AGGREGATING, _R.SELECTING, _R.IDLE}),
    _R.AGGREGATING: frozenset({_R.BROADCASTING, _R.SELECTING, _R.TRAINING, _R.IDLE}),
    _R.BROADCASTING: frozenset({_R.SELECTING, _R.TRAINING, _R.IDLE}),
}


class Phase:
    """The engine's ``RoundState`` (transitions logged) and a wake-up for whoever waits on change."""

    def __init__(self) -> None:
        self.state = RoundState.IDLE
        self._changed = asyncio.Event()

    def to(self, new: RoundState) -> None:
        if new is not self.state:
            if new not in MOVES[self.state]:
                raise RuntimeError(f"round engine: no move from {self.state.value} to {new.value}")
            log.info("round engine: %s -> %s", self.state.value, new.value,
                     extra={"event": "round_state", "from": self.state.value, "to": new.value})
            self.state = new
            self._changed.set()

    def changed(self) -> None:
        """Something a waiting run mode may care about happened (a volunteer, an update)."""
        self._changed.set()

    async def wait_change(self, timeout: float) -> None:
        """Until the next ``changed()`` or ``timeout`` seconds, whichever comes first."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), max(timeout, 0.0))
        except TimeoutError:
            pass
