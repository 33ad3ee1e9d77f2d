"""Norm bounds: reject (``NormBound``) or clip (``clipped``) by L2 norm, bounded from the first update.

An adaptive bound is ``x`` times the median norm of the last ``window`` accepted updates.
Until ``MIN_HISTORY`` norms are known it is ``init``: by default ``x * PRIOR_MEDIAN_NORM``,
as if the median norm were 1.0 (an honest update of the MNIST 2NN has a norm of 0.4 to 0.5
after one local epoch on 600 examples). Without that, the first updates of every run
would pass unbounded. Set ``init`` for models whose updates are much larger.

Norm-bound grammar (``NORM_BOUND_GRAMMAR``), the keys ``clipped`` uses too::

    none | C | x=K[,window=N][,init=C0] | C,x=K[,window=N][,init=C0]      (Kx = x=K)
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any

import numpy as np

from ..specs import Params, Spec, SpecError, parse_params

__all__ = [
    "MAX_WINDOW",
    "MIN_HISTORY",
    "NORM_BOUND_GRAMMAR",
    "PRIOR_MEDIAN_NORM",
    "NormBound",
    "RecentNorms",
    "parse_norm_bound",
]

# Medians of fewer norms are too easy for one or two hostile clients to move.
MIN_HISTORY = 5
#: The median norm an adaptive bound assumes before ``MIN_HISTORY`` norms are known.
PRIOR_MEDIAN_NORM = 1.0
#: The longest norm history: the median is recomputed once per accepted update.
MAX_WINDOW = 10_000
NORM_BOUND_GRAMMAR = "none | C | x=K[,window=N][,init=C0] | C,x=K[,window=N][,init=C0] (C, K, C0 > 0; Kx means x=K)"


def positive(label: str, value: float | None) -> None:
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{label} must be a positive number, got {value!r}")


def check_window(window: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"window must be an integer in [1, {MAX_WINDOW}], got {window!r}")


class RecentNorms:
    """The L2 norms of the last ``window`` accepted updates, across rounds; their median."""

    def __init__(self, window: int) -> None:
        check_window(window)
        self.window = window
        self._norms: deque[float] = deque(maxlen=window)
        self._median: float | None = None

    def __len__(self) -> int:
        return len(self._norms)

    def record(self, norm: float) -> None:
        self._norms.append(float(norm))
        if len(self._norms) >= MIN_HISTORY:
            self._median = statistics.median(self._norms)

    def median(self) -> float | None:
        """The median norm, or ``None`` until ``MIN_HISTORY`` norms were seen."""
        return self._median

    def state(self) -> np.ndarray:
        return np.array(self._norms, dtype=np.float64)

    @classmethod
    def restored(cls, window: int, norms: object) -> RecentNorms:
        """A history holding ``norms`` (oldest first); ``ValueError`` unless they fit."""
        arr = np.asarray(norms)
        if arr.ndim != 1 or arr.size > window or arr.dtype.kind not in "fiu" or not (np.isfinite(arr).all() and (arr >= 0).all()):
            raise ValueError(f"a norm history must be at most {window} finite norms >= 0")
        out = cls(window)
        for norm in arr.tolist():
            out.record(norm)
        return out


class NormBound:
    """Reject (not clip) updates whose L2 norm exceeds a hard bound.

    The bound is ``max_norm``, ``factor`` times the median norm of the last ``window``
    accepted updates (``initial`` until ``MIN_HISTORY`` are known; see the module), or
    the smaller of both. Only ``record`` feeds the history, so call it for accepted
    updates only: rejected norms must not drag the median up.

    Either the server calls ``check``/``record`` itself or it hands the bound to
    ``get_aggregator(spec, bound=...)`` and the rule does both inside ``add``.
    """

    def __init__(
        self, max_norm: float | None = None, factor: float | None = None, window: int = 100, initial: float | None = None
    ) -> None:
        positive("max_norm", max_norm)
        positive("factor", factor)
        positive("initial", initial)
        if max_norm is None and factor is None:
            raise ValueError("a norm bound needs a fixed bound C, a factor x=K or both")
        if factor is None and initial is not None:
            raise ValueError("init only applies to an adaptive bound (x=K)")
        self.max_norm, self.factor, self.initial = max_norm, factor, initial
        self._recent = RecentNorms(window)

    @property
    def window(self) -> int:
        return self._recent.window

    @property
    def spec(self) -> str:
        """The canonical spec: ``parse_norm_bound(b.spec)`` builds an equal bound."""
        parts = [] if self.max_norm is None else [f"{self.max_norm:g}"]
        if self.factor is not None:
            parts += [f"x={self.factor:g}", f"window={self.window}"]
            if self.initial is not None:
                parts.append(f"init={self.initial:g}")
        return ",".join(parts)

    @property
    def limit(self) -> float:
        """The bound an update is checked against right now."""
        limits = [self.max_norm] if self.max_norm is not None else []
        if self.factor is not None:
            limits.append(self._adaptive()[0])
        return min(limits)

    def _adaptive(self) -> tuple[float, str]:
        median = self._recent.median()
        if median is not None:
            return self.factor * median, (
                f"{self.factor:g}x the median norm {median:.4g} of the last {len(self._recent)} accepted updates"
            )
        if self.initial is not None:
            return self.initial, f"the initial bound {self.initial:.4g} (fewer than {MIN_HISTORY} norms known)"
        prior = self.factor * PRIOR_MEDIAN_NORM
        return prior, f"{self.factor:g}x the prior median norm {PRIOR_MEDIAN_NORM:g} (fewer than {MIN_HISTORY} norms known)"

    def check(self, norm: float) -> str | None:
        """Why an update of this norm must be rejected, or ``None`` if it may pass."""
        if not math.isfinite(norm):
            return f"update norm {norm} is not finite"
        if self.max_norm is not None and norm > self.max_norm:
            return f"update norm {norm:.4g} exceeds the fixed bound {self.max_norm:.4g}"
        if self.factor is not None:
            bound, why = self._adaptive()
            if norm > bound:
                return f"update norm {norm:.4g} exceeds {why}"
        return None

    def record(self, norm: float) -> None:
        """Add an accepted update's norm to the history."""
        self._recent.record(norm)

    def state(self) -> np.ndarray:
        """The norm history, oldest first (what a resumed run needs)."""
        return self._recent.state()

    def load_state(self, norms: object) -> None:
        self._recent = RecentNorms.restored(self.window, norms)

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "max_norm": self.max_norm,
            "factor": self.factor,
            "window": self.window,
            "init": self.initial,
            "known": len(self._recent),
            "limit": self.limit,
        }


def parse_norm_bound(spec: str | None) -> NormBound | None:
    """The bound a norm-bound spec names (``NORM_BOUND_GRAMMAR``); ``None`` for none.

    ``"5"``: fixed; ``"x=3"`` (or ``"3x"``): 3 times the recent median norm; ``"5,x=3"``:
    the smaller of both. ``SpecError`` (a ``ValueError``) naming the bad part otherwise.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none")):
        return None
    what, grammar = "norm bound", NORM_BOUND_GRAMMAR
    parsed = parse_params(spec, what=what, grammar=grammar)
    args = list(parsed.args)
    shorthand = [a for a in args if a.endswith("x") and len(a) > 1]
    kwargs = dict(parsed.kwargs)
    for a in shorthand:  # "3x" is x=3
        if "x" in kwargs:
            raise SpecError(what, spec, "x", "given twice", grammar)
        kwargs["x"] = a[:-1]
        args.remove(a)
    p = Params(Spec("", tuple(args), tuple(kwargs.items())), spec, what=what, grammar=grammar, positional=("c",))
    max_norm = p.number("c", 0, open_lo=True)
    factor = p.number("x", 0, open_lo=True)
    window = p.integer("window", 1, MAX_WINDOW)
    initial = p.number("init", 0, open_lo=True)
    p.done()
    if factor is None and (window is not None or initial is not None):
        raise p.error("window" if window is not None else "init", "only applies with x=K")
    if max_norm is None and factor is None:
        raise p.error(spec.strip(), "give a fixed bound C or x=K")
    return NormBound(max_norm, factor, 100 if window is None else window, initial)
