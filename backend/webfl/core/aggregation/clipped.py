"""Clipped FedAvg: FedAvg of norm-clipped updates, streamed; a fixed or adaptive bound."""

from __future__ import annotations

from typing import Any

from ..codecs import Codec, Encoded
from ..specs import Params
from .base import RuleState
from .bounds import MAX_WINDOW, PRIOR_MEDIAN_NORM, RecentNorms, check_window, positive
from .fedavg import FedAvg

__all__ = ["ClippedFedAvg"]


class ClippedFedAvg(FedAvg):
    """FedAvg of updates scaled by ``min(1, C / ||u||)``, streamed.

    ``C`` is ``clip_norm`` if given; otherwise ``factor`` times the median norm of the
    last ``window`` accepted updates (norms before clipping, across rounds: keep one
    instance per run and checkpoint ``state()``), and until ``MIN_HISTORY`` norms are
    known ``initial``, by default ``factor * PRIOR_MEDIAN_NORM`` (see ``bounds``): a bound
    holds from the first update. Clipping bounds any one client's pull on the mean to
    ``C * weight / total_weight``; it does not stop small-norm attacks such as sign flips.
    """

    name = "clipped"
    positional = ("c",)

    def __init__(
        self,
        clip_norm: float | None = None,
        factor: float = 1.0,
        window: int = 100,
        initial: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for label, v in (("clip norm", clip_norm), ("factor", factor), ("initial bound", initial)):
            positive(label, v)
        check_window(window)
        self.clip_norm, self.factor, self.window, self.initial = clip_norm, factor, window, initial
        self._recent = RecentNorms(window)
        self.num_clipped = 0

    @classmethod
    def from_params(cls, p: Params) -> dict[str, Any]:
        clip_norm = p.number("c", 0, open_lo=True)
        if clip_norm is not None:
            if p.keys():
                raise p.error(sorted(p.keys())[0], "a fixed clip norm c excludes x, window and init")
            return {"clip_norm": clip_norm}
        out = {
            "factor": p.number("x", 0, open_lo=True),
            "window": p.integer("window", 1, MAX_WINDOW),
            "initial": p.number("init", 0, open_lo=True),
        }
        return {k: v for k, v in out.items() if v is not None}

    def params(self) -> dict[str, Any]:
        if self.clip_norm is not None:
            return {"c": self.clip_norm}
        p: dict[str, Any] = {"x": self.factor, "window": self.window}
        if self.initial is not None:
            p["init"] = self.initial
        return p

    @property
    def mergeable(self) -> bool:
        # An adaptive bound learns from every norm, and the clipped count would miss the shares'.
        return False

    @property
    def clip_bound(self) -> float:
        """The norm the next update is clipped to."""
        if self.clip_norm is not None:
            return self.clip_norm
        median = self._recent.median()
        if median is not None:
            return self.factor * median
        return self.factor * PRIOR_MEDIAN_NORM if self.initial is None else self.initial

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "clip_bound": self.clip_bound, "clipped": self.num_clipped}

    def _state(self) -> RuleState:
        return {} if self.clip_norm is not None else {"norms": self._recent.state()}

    def _check_state(self, state: RuleState) -> RecentNorms | None:
        return None if self.clip_norm is not None else RecentNorms.restored(self.window, state.get("norms"))

    def _load_state(self, restored: RecentNorms | None) -> None:
        if restored is not None:
            self._recent = restored

    def _start(self) -> None:
        super()._start()
        self.num_clipped = 0

    def _add(self, codec: Codec, enc: Encoded, weight: float) -> float | None:
        u, norm = self._decode(codec, enc)
        c = self.clip_bound
        clip = norm > c
        self._accumulate(u, weight * (c / norm if clip else 1.0))
        # Bookkeeping only after the update is in: a failed add must not count.
        self.num_clipped += int(clip)
        if self.clip_norm is None:
            self._recent.record(norm)
        return norm
