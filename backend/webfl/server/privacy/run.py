"""Differential privacy in a run: the rule a DP run folds into, and its privacy ledger.

``DPRule`` is the ``Aggregator`` the run modes fold into when a run has ``"dp"``
settings (``RunConfig.rule`` builds it): each decoded update goes into the core's
``DPSum`` (re-clipped to ``C``, summed), and ``finish`` is one noised release divided by
the expected cohort. Example counts are never weights here (a self-reported count would
let one volunteer claim any share); the only weight is FedBuff's staleness discount <= 1.

``PrivacyLedger`` is the run's accountant as a checkpointed component: the commit
charges it once per committed round, inside the same store transaction as the model and
the adaptive clip (the rule's state), so a crash neither loses nor double-counts a round.
Before each round the run asks ``exhausted()``: a round that would take epsilon past
``max_epsilon`` is never started.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ...core.aggregation import Aggregator, NormBound
from ...core.codecs import Codec, Encoded
from ...core.privacy import Release, ReleaseState
from .accountant import Accountant
from .settings import DPSettings

__all__ = ["DPRule", "PrivacyLedger"]

log = logging.getLogger("webfl.privacy")


class DPRule(Aggregator):
    """DP-FedAvg's release as the run's rule: ``begin``, ``add``, ``finish`` like any rule."""

    name = "dp"

    def __init__(self, settings: DPSettings, *, bound: NormBound | None = None) -> None:
        super().__init__(bound=bound)
        self.settings = settings
        self.release = settings.release()
        self.last: Release | None = None  # the last round's release, for the ledger
        self._report: bool | None = None

    @property
    def clip(self) -> float:
        """The clip norm of the open (or next) round: what tasks tell volunteers."""
        return self.release.clip

    def add(self, codec: Codec, enc: Encoded, weight: float, clipped: bool | None = None) -> None:
        """``Aggregator.add`` plus the sender's ``clipped`` report (adaptive clipping's bit).

        ``weight`` is a discount in (0, 1] (FedBuff's staleness), never an example count.
        """
        self._report = clipped
        try:
            super().add(codec, enc, weight)
        finally:
            self._report = None

    def add_sum(self, total: np.ndarray, count: int) -> None:
        """Secure aggregation's unmasked sum of ``count`` updates, each clipped by its sender (``DPSum.add_sum``)."""
        if not self._open:
            raise ValueError("dp: no round in progress; call begin() first")
        self.release.add_sum(total, count)
        self.count += count
        self.total_weight += count

    def _start(self) -> None:
        self.release.begin(self.size)

    def _add(self, codec: Codec, enc: Encoded, weight: float) -> float | None:
        u, norm = self._decode(codec, enc)  # validated, and the fixed norm bound if any
        self.release.add(u, self._report, weight)  # ValueError: nothing changed
        return norm

    def _finish(self) -> np.ndarray:
        self.last = self.release.finish()
        return self.last.delta

    def _release(self) -> None:
        if self.release.state is ReleaseState.OPEN:
            self.release.abandon()

    def _state(self) -> dict:
        return {"clip": self.release.clip}

    def _check_state(self, state: dict) -> Any:
        clip = state.get("clip")
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not (math.isfinite(clip) and clip > 0):
            raise ValueError(f"dp rule state needs a positive clip, got {clip!r}")
        if self.settings.adaptive is None and clip != self.settings.clip:
            raise ValueError(f"dp rule state has clip {clip}, the run's fixed clip is {self.settings.clip}")
        return float(clip)

    def _load_state(self, clip: Any) -> None:
        self.release = self.settings.release(clip if self.settings.adaptive is not None else None)


class PrivacyLedger:
    """The run's accountant (a checkpointed component) and what the status shows of it.

    ``past``: the accountant states of the task's earlier runs, for the task's total (the
    same volunteers can take part in every run). Epsilons are computed when the count of
    rounds changes, not at every status poll (PLD takes a while).
    """

    def __init__(self, settings: DPSettings, rule: DPRule, past: list[dict] | None = None) -> None:
        self.settings, self.rule = settings, rule
        self.accountant = Accountant(settings.accountant)
        self._past = list(past or [])
        self.stop_reason: str | None = None
        self._refresh()

    # -- Component --------------------------------------------------------------------

    def state(self) -> dict:
        return self.accountant.state()

    def load_state(self, state: dict) -> None:
        self.accountant = Accountant.from_state(state)
        self._refresh()

    # -- the round --------------------------------------------------------------------

    def _epsilon(self, accountant: Accountant) -> float | None:
        if self.settings.noise_multiplier == 0:
            return None  # clipping only: no guarantee
        return accountant.epsilon(self.settings.delta)

    def _refresh(self) -> None:
        self.epsilon = self._epsilon(self.accountant)
        total = Accountant.combined([*self._past, self.accountant.state()], self.settings.accountant)
        self.task_epsilon = None if total.rounds and self.settings.noise_multiplier == 0 else total.epsilon(self.settings.delta)
        self._exhausted_at: int | None = None

    def charge(self) -> dict:
        """Charge the round just released (call it in the commit); its history entry's privacy part."""
        release = self.rule.last
        assert release is not None, "charge after the rule's finish"
        self.accountant.charge(self.settings.mechanism, self.settings.sampling_rate)
        self._refresh()
        return {
            "epsilon": self.epsilon,
            "clip": release.clip,
            # None under secure aggregation: the clipped bits are hidden with the updates.
            "clipped_fraction": release.clipped / release.count if release.count and release.clipped is not None else None,
            "updates": release.count,
            "noise_std": release.noise_std,
            "next_clip": release.next_clip,
            # How the server found each decoded norm: within C, over by the codec's error, or unclipped.
            "verdicts": dict(release.verdicts),
        }

    def exhausted(self) -> str | None:
        """Why no further round may run (``max_epsilon``), or ``None``; asked before each round."""
        cap = self.settings.max_epsilon
        if cap is None:
            return None
        if self._exhausted_at != self.accountant.rounds:
            s = self.settings
            over = self.accountant.would_exceed(s.mechanism, cap, s.delta, s.sampling_rate)
            self.stop_reason = (
                f"privacy budget: one more round would take epsilon past max_epsilon {cap:g}"
                f" (epsilon {self.epsilon if self.epsilon is not None else 0:.4g} after {self.accountant.rounds} round(s))"
                if over else None
            )
            if over:
                log.warning("run stops: %s", self.stop_reason)
            self._exhausted_at = self.accountant.rounds
        return self.stop_reason

    # -- reporting --------------------------------------------------------------------

    def status(self) -> dict:
        """``run.privacy`` of the admin status."""
        out = self.settings.status(self.epsilon, self.rule.clip)
        out |= {"max_epsilon": self.settings.max_epsilon, "rounds": self.accountant.rounds, "task_epsilon": self.task_epsilon,
                "stopped": self.stop_reason}
        return out

    def frame(self) -> dict:
        """The volunteers' ``status`` frame's ``privacy``: what the page states in words."""
        return {"epsilon": self.epsilon, "delta": self.settings.delta, "clip": self.rule.clip,
                "noise": self.settings.noise_multiplier > 0}
