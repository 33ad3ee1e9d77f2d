"""Aggregation rules: how a round's accepted updates become one model delta.

A rule sees a round as three steps: ``begin`` with the model size and the most
updates the round can receive, ``add`` once per update, and ``finish`` for the delta
to apply. Rules are named by spec strings (see ``GRAMMAR`` and ``get_aggregator``):

* ``fedavg``: example-weighted mean, streamed (McMahan et al. 2017).
* ``clipped``: FedAvg of norm-clipped updates, streamed; fixed or adaptive bound.
* ``median``, ``trimmed_mean``: coordinate-wise robust means (Yin et al. 2018).
* ``multikrum``: mean of the updates closest to their neighbours (Blanchard et al. 2017).

Anyone can open the volunteer page, so ``add`` validates before anything touches the
rule's state: the codec checks shape, dtype and finiteness, the rule re-checks them and,
given a ``NormBound``, rejects updates whose L2 norm is out of bounds. A failed ``add``
leaves the rule exactly as it was.

Streaming rules keep O(size) memory. Buffering rules keep every update of the round in
one preallocated float32 matrix, so they state their bound (``memory_bytes``) and
``begin`` refuses a round that would exceed ``memory_limit``.

Example counts (``weight``) are self-reported unless the server derives them: the
coordinate-wise rules ignore them and Multi-Krum only uses them among the selected.
"""

from __future__ import annotations

import math
import operator
import statistics
from abc import ABC, abstractmethod
from collections import deque
from typing import Any, ClassVar

import numpy as np

from .codecs import Codec, CodecError, Encoded

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "ClippedFedAvg",
    "CoordinateMedian",
    "DEFAULT_MEMORY_LIMIT",
    "FedAvg",
    "GRAMMAR",
    "MIN_HISTORY",
    "MultiKrum",
    "NormBound",
    "TrimmedMean",
    "UpdateRejected",
    "get_aggregator",
]

GRAMMAR = (
    "aggregator spec: fedavg | clipped[:C | :x=K[,window=N][,init=C]] | median"
    " | trimmed_mean[:BETA] (0 <= BETA < 0.5) | multikrum[:f=F][,m=M]"
)
DEFAULT_MEMORY_LIMIT = 512 * 2**20
# Medians of fewer norms are too easy for one or two hostile clients to move.
MIN_HISTORY = 5
# Float64 working blocks of the buffering rules stay under this many bytes.
_BLOCK_BYTES = 16 * 2**20
# NumPy's casting and reduction buffers and other small arrays, counted once per round.
_SLACK_BYTES = 2**20


class UpdateRejected(ValueError):
    """An update that decodes fine but fails a policy check (its norm is out of bounds)."""


class _RecentNorms:
    """The L2 norms of the last ``window`` accepted updates, across rounds."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._norms: deque[float] = deque(maxlen=window)

    def __len__(self) -> int:
        return len(self._norms)

    def record(self, norm: float) -> None:
        self._norms.append(float(norm))

    def median(self) -> float | None:
        """The median norm, or ``None`` until ``MIN_HISTORY`` norms were seen."""
        return statistics.median(self._norms) if len(self._norms) >= MIN_HISTORY else None


class NormBound:
    """Reject (not clip) updates whose L2 norm exceeds a hard bound.

    The bound is ``max_norm``, ``factor`` times the median norm of the last ``window``
    accepted updates, or the smaller of both. Before ``MIN_HISTORY`` accepted norms the
    adaptive part does not apply. Only ``record`` feeds the history, so call it for
    accepted updates only: rejected norms must not drag the median up.

    Either the server calls ``check``/``record`` itself or it hands the bound to
    ``get_aggregator(spec, bound=...)`` and the rule does both inside ``add``.
    """

    def __init__(self, max_norm: float | None = None, factor: float | None = None, window: int = 100) -> None:
        if max_norm is not None and not (math.isfinite(max_norm) and max_norm > 0):
            raise ValueError(f"max_norm must be a positive number, got {max_norm!r}")
        if factor is not None and not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"factor must be a positive number, got {factor!r}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window!r}")
        self.max_norm = max_norm
        self.factor = factor
        self._recent = _RecentNorms(window)

    @classmethod
    def parse(cls, spec: str) -> NormBound | None:
        """``"none"``, ``"C"`` (fixed bound C) or ``"Kx"`` (K times the recent median norm)."""
        s = spec.strip().lower()
        if s in ("", "none"):
            return None
        try:
            if s.endswith("x"):
                return cls(factor=float(s[:-1]))
            return cls(max_norm=float(s))
        except ValueError:
            raise ValueError(f"bad norm bound {spec!r}; expected none, C or Kx (e.g. 10x)") from None

    @property
    def limit(self) -> float | None:
        """The bound an update is checked against right now (``None``: no bound yet)."""
        limits = [self.max_norm] if self.max_norm is not None else []
        median = self._recent.median() if self.factor is not None else None
        if median is not None:
            limits.append(self.factor * median)
        return min(limits) if limits else None

    def check(self, norm: float) -> str | None:
        """Why an update of this norm must be rejected, or ``None`` if it may pass."""
        if not math.isfinite(norm):
            return f"update norm {norm} is not finite"
        if self.max_norm is not None and norm > self.max_norm:
            return f"update norm {norm:.4g} exceeds the fixed bound {self.max_norm:.4g}"
        median = self._recent.median() if self.factor is not None else None
        if median is not None and norm > self.factor * median:
            return (
                f"update norm {norm:.4g} exceeds {self.factor:g}x the median norm {median:.4g}"
                f" of the last {len(self._recent)} accepted updates"
            )
        return None

    def record(self, norm: float) -> None:
        """Add an accepted update's norm to the history."""
        self._recent.record(norm)

    def describe(self) -> dict[str, Any]:
        return {"max_norm": self.max_norm, "factor": self.factor, "window": self._recent.window, "limit": self.limit}


class Aggregator(ABC):
    """One aggregation rule; ``begin``, ``add`` per update, ``finish``, then again.

    ``weight`` is the update's example count. It is self-reported by the volunteer unless
    the server derives it, so rules that must resist hostile clients ignore it or only use
    it among updates they already trust.
    """

    name: ClassVar[str]
    buffered: ClassVar[bool] = False

    def __init__(self, *, bound: NormBound | None = None, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> None:
        self.bound = bound
        self.memory_limit = memory_limit
        self.size = 0
        self.max_updates: int | None = None
        self.count = 0
        self.total_weight = 0.0
        self._open = False

    # -- description -------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """The rule's parameters as they appear in its canonical spec (in order)."""
        return {}

    @property
    def spec(self) -> str:
        """The canonical spec: ``get_aggregator(rule.spec)`` builds an equal rule."""
        params = self.params()
        return f"{self.name}:{','.join(f'{k}={_fmt(v)}' for k, v in params.items())}" if params else self.name

    def describe(self) -> dict[str, Any]:
        """What a status page shows: name, spec, parameters, memory, last round's facts."""
        return {
            "name": self.name,
            "spec": self.spec,
            "params": self.params(),
            "buffered": self.buffered,
            "memory_limit": self.memory_limit if self.buffered else None,
            "bound": self.bound.describe() if self.bound is not None else None,
            "count": self.count,
        }

    def __repr__(self) -> str:
        return f"get_aggregator({self.spec!r})"

    @classmethod
    def _from_args(cls, positional: list[str], keyword: dict[str, str]) -> dict[str, Any]:
        """Constructor arguments from a spec's parameters; ``ValueError`` if bad."""
        if positional or keyword:
            raise ValueError(f"{cls.name} takes no parameters")
        return {}

    # -- memory --------------------------------------------------------------------

    @classmethod
    def memory_bytes(cls, size: int, max_updates: int | None = None) -> int:
        """Peak bytes the rule holds for a round: a float64 accumulator and a float32 temporary."""
        return 12 * size + _SLACK_BYTES

    # -- the round ------------------------------------------------------------------

    def check_memory(self, size: int, max_updates: int | None = None) -> None:
        """Raise ``ValueError`` if such a round would exceed ``memory_limit`` (allocates nothing).

        ``begin`` checks it too; an admin API can call it to refuse a run up front.
        """
        need = self.memory_bytes(size, max_updates)
        if self.buffered and need > self.memory_limit:
            raise ValueError(
                f"{self.name} needs {_mib(need)} to buffer {max_updates} updates of {size}"
                f" parameters, over its {_mib(self.memory_limit)} limit;"
                " select fewer clients per round, raise the limit, or use a streaming rule"
            )

    def begin(self, size: int, max_updates: int | None = None) -> None:
        """Start a round for a model of ``size`` parameters and at most ``max_updates`` updates.

        Raises ``ValueError`` if the round would need more than ``memory_limit`` bytes; the
        previous round's state is dropped either way.
        """
        size = operator.index(size)
        if size < 1:
            raise ValueError(f"model size must be positive, got {size}")
        if max_updates is not None:
            max_updates = operator.index(max_updates)
            if max_updates < 1:
                raise ValueError(f"max_updates must be positive, got {max_updates}")
        self.abort()  # before allocating, so two rounds' buffers never coexist
        self.check_memory(size, max_updates)
        self.size, self.max_updates = size, max_updates
        self.count, self.total_weight = 0, 0.0
        self._start()
        self._open = True

    def add(self, codec: Codec, enc: Encoded, weight: float) -> None:
        """Fold in one update.

        Raises ``CodecError`` if it is malformed, ``UpdateRejected`` if its norm is out of
        bounds, ``ValueError`` for a bad weight or a full round; the rule is then unchanged.
        """
        if not self._open:
            raise ValueError(f"{self.name}: no round in progress; call begin() first")
        w = float(weight)
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"update weight must be a positive number, got {weight!r}")
        if self.max_updates is not None and self.count >= self.max_updates:
            raise ValueError(f"{self.name}: the round already holds its {self.max_updates} updates")
        norm = self._add(codec, enc, w)
        self.count += 1
        self.total_weight += w
        if norm is not None and self.bound is not None:
            self.bound.record(norm)

    def finish(self) -> np.ndarray:
        """The aggregate float32 delta; ends the round and frees its buffers."""
        if not self._open:
            raise ValueError(f"{self.name}: no round in progress; call begin() first")
        if not self.count:
            raise ValueError("no updates to aggregate")
        out = self._finish()
        self.abort()
        return out

    def abort(self) -> None:
        """End the round without aggregating (e.g. too few updates) and free its buffers."""
        self._open = False
        self._release()

    # -- what a rule implements --------------------------------------------------------

    @abstractmethod
    def _start(self) -> None:
        """Allocate the round's state (``size`` and ``max_updates`` are set)."""

    @abstractmethod
    def _add(self, codec: Codec, enc: Encoded, weight: float) -> float | None:
        """Fold in an update, or raise leaving state unchanged; returns its norm if computed."""

    @abstractmethod
    def _finish(self) -> np.ndarray:
        """The float32 aggregate of the ``count`` updates added."""

    def _release(self) -> None:
        """Drop the round's arrays."""

    def _decode(self, codec: Codec, enc: Encoded) -> tuple[np.ndarray, float]:
        """The validated float32 update and its L2 norm; raises before touching any state."""
        u = codec.decode(enc, self.size)
        # Re-check what the codec promises: a buggy codec must not poison a buffer either.
        if not isinstance(u, np.ndarray) or u.dtype != np.float32 or u.shape != (self.size,):
            got = f"{getattr(u, 'dtype', type(u).__name__)} {getattr(u, 'shape', '')}"
            raise CodecError(f"codec returned {got}, not {self.size} float32 values")
        norm = _l2norm(u)
        if self.bound is not None and (reason := self.bound.check(norm)) is not None:
            raise UpdateRejected(reason)
        return u, norm


def _l2norm(u: np.ndarray) -> float:
    """L2 norm of a float32 vector; ``CodecError`` if it holds NaN or Inf.

    One BLAS dot: a NaN or Inf anywhere makes the sum of squares non-finite, so the
    finiteness check only costs a second pass when that happens.
    """
    sq = float(np.dot(u, u))
    if math.isfinite(sq):
        return math.sqrt(sq)
    if not np.isfinite(u).all():
        raise CodecError("update contains NaN or Inf", "nan")
    return float(np.linalg.norm(u.astype(np.float64)))  # finite, but float32 squares overflowed


class FedAvg(Aggregator):
    """The example-weighted mean of the deltas (McMahan et al. 2017), streamed.

    One float64 accumulator of the model's size, however many updates arrive. Without a
    ``NormBound`` it uses ``codec.accumulate`` (no dense copy for sparse codecs), which
    validates before it adds; with one it must decode to measure the norm.
    """

    name = "fedavg"

    def _start(self) -> None:
        self._sum = np.zeros(self.size, dtype=np.float64)

    def _release(self) -> None:
        self._sum = None

    def _add(self, codec: Codec, enc: Encoded, weight: float) -> float | None:
        if self.bound is None:
            codec.accumulate(self._sum, weight, enc)
            return None
        u, norm = self._decode(codec, enc)
        self._accumulate(u, weight)
        return norm

    def _accumulate(self, u: np.ndarray, scale: float) -> None:
        # Fused into the float64 accumulator through a float32 temporary: no float64 copy.
        np.add(self._sum, u * np.float32(scale), out=self._sum, casting="unsafe")

    def _finish(self) -> np.ndarray:
        # In place: the accumulator dies with the round, and no second float64 vector.
        return np.divide(self._sum, self.total_weight, out=self._sum).astype(np.float32)


class ClippedFedAvg(FedAvg):
    """FedAvg of updates scaled by ``min(1, C / ||u||)``, streamed.

    ``C`` is ``clip_norm`` if given; otherwise ``factor`` times the median norm of the
    last ``window`` accepted updates (across rounds, so keep one instance per run;
    norms before clipping), and ``initial``
    (``None``: no clipping) until ``MIN_HISTORY`` norms were seen. Clipping bounds any one
    client's pull on the mean to ``C * weight / total_weight``; it does not stop
    small-norm attacks such as sign flips.
    """

    name = "clipped"

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
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"{label} must be a positive number, got {v!r}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window!r}")
        self.clip_norm, self.factor, self.window, self.initial = clip_norm, factor, window, initial
        self._recent = _RecentNorms(window)
        self.num_clipped = 0

    @classmethod
    def _from_args(cls, positional: list[str], keyword: dict[str, str]) -> dict[str, Any]:
        _expect(cls.name, positional, keyword, 1, ("c", "x", "window", "init"))
        if positional:
            if "c" in keyword:
                raise ValueError("clip norm given twice")
            keyword["c"] = positional[0]
        if "c" in keyword:
            if len(keyword) > 1:
                raise ValueError("a fixed clip norm c excludes x, window and init")
            return {"clip_norm": _positive(keyword["c"], "c")}
        out: dict[str, Any] = {}
        if "x" in keyword:
            out["factor"] = _positive(keyword["x"], "x")
        if "window" in keyword:
            out["window"] = _int(keyword["window"], "window", 1)
        if "init" in keyword:
            out["initial"] = _positive(keyword["init"], "init")
        return out

    def params(self) -> dict[str, Any]:
        if self.clip_norm is not None:
            return {"c": self.clip_norm}
        p: dict[str, Any] = {"x": self.factor, "window": self.window}
        if self.initial is not None:
            p["init"] = self.initial
        return p

    @property
    def clip_bound(self) -> float | None:
        """The norm the next update is clipped to (``None``: no clipping yet)."""
        if self.clip_norm is not None:
            return self.clip_norm
        median = self._recent.median()
        return self.initial if median is None else self.factor * median

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "clip_bound": self.clip_bound, "clipped": self.num_clipped}

    def _start(self) -> None:
        super()._start()
        self.num_clipped = 0

    def _add(self, codec: Codec, enc: Encoded, weight: float) -> float | None:
        u, norm = self._decode(codec, enc)
        c = self.clip_bound
        clip = c is not None and norm > c
        self._accumulate(u, weight * (c / norm if clip else 1.0))
        # Bookkeeping only after the update is in: a failed add must not count.
        self.num_clipped += int(clip)
        if self.clip_norm is None:
            self._recent.record(norm)
        return norm


class _Buffered(Aggregator):
    """A rule that needs every update of the round at once: one (max_updates, size) float32 matrix.

    ``memory_bytes(d, n)`` = 4nd (buffer) + 8n (weights) + 12d (float64 result and its
    float32 copy) + 1 MiB (NumPy's small buffers); Multi-Krum adds its Gram work, below.
    For the 2NN (d = 199,210) that is 77 MiB per 100 updates: 512 MiB holds ~670.
    """

    buffered = True

    @classmethod
    def memory_bytes(cls, size: int, max_updates: int | None = None) -> int:
        """Peak bytes of a round of ``max_updates`` updates of ``size`` (see the class)."""
        if max_updates is None:
            raise ValueError(f"{cls.name} buffers the round's updates: begin() needs max_updates")
        return 4 * max_updates * size + 8 * max_updates + cls._scratch_bytes(size, max_updates) + _SLACK_BYTES

    @classmethod
    def _scratch_bytes(cls, size: int, max_updates: int) -> int:
        return 12 * size  # a float64 result and its float32 copy

    def _start(self) -> None:
        # np.empty: the OS commits pages as rows are written, so a thin round stays cheap.
        self._buf = np.empty((self.max_updates, self.size), dtype=np.float32)
        self._weights = np.empty(self.max_updates, dtype=np.float64)

    def _release(self) -> None:
        self._buf = self._weights = None

    def _add(self, codec: Codec, enc: Encoded, weight: float) -> float | None:
        u, norm = self._decode(codec, enc)
        # Row ``count`` is not part of the state until count moves past it, so a failure
        # before this line leaves nothing behind.
        self._buf[self.count] = u
        self._weights[self.count] = weight
        return norm


class _SortedMean(_Buffered):
    """Sort each coordinate across updates in place, average the middle rows in float64."""

    @abstractmethod
    def _trim(self, n: int) -> int:
        """How many values to drop from each end of a coordinate's ``n`` sorted values."""

    def _finish(self) -> np.ndarray:
        n = self.count
        k = self._trim(n)
        rows = self._buf[:n]
        if k:
            # One in-place sort along axis 0 (SIMD; faster than np.partition for short
            # columns) reorders values within each column only: no copy of the matrix.
            rows.sort(axis=0)
        return rows[k : n - k].mean(axis=0, dtype=np.float64).astype(np.float32)


class CoordinateMedian(_SortedMean):
    """Coordinate-wise median of the updates (Yin et al. 2018); weights are ignored.

    Ignoring weights is deliberate: a weighted median would let one client that claims a
    huge example count decide every coordinate. An even count averages the two middle values.
    """

    name = "median"

    def _trim(self, n: int) -> int:
        return (n - 1) // 2


class TrimmedMean(_SortedMean):
    """Coordinate-wise ``beta``-trimmed mean (Yin et al. 2018); weights are ignored.

    Drops the ``floor(beta * n)`` smallest and largest values of each coordinate and
    averages the rest; ``beta = 0`` is the unweighted mean.
    """

    name = "trimmed_mean"

    def __init__(self, beta: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 <= beta < 0.5:
            raise ValueError(f"beta must satisfy 0 <= beta < 0.5, got {beta!r}")
        self.beta = beta

    @classmethod
    def _from_args(cls, positional: list[str], keyword: dict[str, str]) -> dict[str, Any]:
        _expect(cls.name, positional, keyword, 1, ("beta",))
        if positional and keyword:
            raise ValueError("beta given twice")
        raw = positional[0] if positional else keyword.get("beta")
        if raw is None:
            return {}
        beta = _number(raw, "beta")
        if not 0 <= beta < 0.5:
            raise ValueError(f"beta must satisfy 0 <= beta < 0.5, got {raw}")
        return {"beta": beta}

    def params(self) -> dict[str, Any]:
        return {"beta": self.beta}

    def _trim(self, n: int) -> int:
        # The epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from trimming one too few.
        return math.floor(self.beta * n + 1e-9)


class MultiKrum(_Buffered):
    """Multi-Krum (Blanchard et al. 2017): average the ``m`` updates closest to their neighbours.

    Each update's score is the sum of its squared distances to its ``n - f - 2`` nearest
    other updates, ``f`` being the number of Byzantine updates to tolerate; the ``m``
    lowest-scoring updates are averaged, weighted by example count. Defaults, taken from
    the count ``n`` at ``finish``: ``f = (n - 3) // 2`` (the most Krum tolerates) and
    ``m = n - f``. An explicit ``f`` needs ``n >= 2f + 3`` or ``finish`` raises; ``m`` is
    capped at ``n - f``. ``selected`` holds the chosen update indices (in ``add`` order).

    Memory beyond the buffer: 32n^2 for the (n, n) matrices and 12nw + 8w for one float64
    column block of w ~ 16 MiB / 8n columns (17 MiB more at n = 100 for the 2NN).
    """

    name = "multikrum"

    def __init__(self, f: int | None = None, m: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if f is not None and f < 0:
            raise ValueError(f"f must be at least 0, got {f!r}")
        if m is not None and m < 1:
            raise ValueError(f"m must be at least 1, got {m!r}")
        self.f, self.m = f, m
        self.selected: np.ndarray | None = None
        self.scores: np.ndarray | None = None
        self.effective: dict[str, int] | None = None  # f and m of the last finish

    @classmethod
    def _from_args(cls, positional: list[str], keyword: dict[str, str]) -> dict[str, Any]:
        _expect(cls.name, positional, keyword, 0, ("f", "m"))
        out: dict[str, Any] = {}
        if "f" in keyword:
            out["f"] = _int(keyword["f"], "f", 0)
        if "m" in keyword:
            out["m"] = _int(keyword["m"], "m", 1)
        return out

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in (("f", self.f), ("m", self.m)) if v is not None}

    @classmethod
    def _scratch_bytes(cls, size: int, max_updates: int) -> int:
        # Gram, distance and temporary (n, n) float64 matrices; per column block a float32
        # gather of the selected rows, its float64 copy and their product; the result.
        width = _block_width(size, max_updates)
        return 32 * max_updates**2 + 12 * max_updates * width + 8 * width + 12 * size

    def describe(self) -> dict[str, Any]:
        selected = None if self.selected is None else self.selected.tolist()
        return {**super().describe(), "selected": selected, "effective": self.effective}

    def _finish(self) -> np.ndarray:
        n = self.count
        f = max(0, (n - 3) // 2) if self.f is None else self.f
        if f and n < 2 * f + 3:
            raise ValueError(f"multikrum with f={f} needs at least {2 * f + 3} updates, got {n}")
        m = n - f if self.m is None else min(self.m, n - f)
        rows = self._buf[:n]

        # Squared distances from one Gram matrix: d_ij = G_ii + G_jj - 2 G_ij. That form
        # cancels catastrophically when updates are close relative to their norms, so G is
        # accumulated in float64 over column blocks (bounded scratch, float64 BLAS).
        gram = np.zeros((n, n), dtype=np.float64)
        for cols in _column_blocks(self.size, n):
            block = rows[:, cols].astype(np.float64)
            gram += block @ block.T
            del block  # freed before the next one is allocated: memory_bytes counts one
        sq = np.diag(gram)
        dist = sq[:, None] + sq[None, :] - 2.0 * gram
        np.maximum(dist, 0.0, out=dist)  # rounding can leave tiny negatives
        np.fill_diagonal(dist, np.inf)  # never one's own neighbour

        k = n - f - 2
        if k >= 1:
            scores = np.partition(dist, k - 1, axis=1)[:, :k].sum(axis=1)
        else:  # n <= 2 with f = 0: nothing to compare, every update is kept
            scores = np.zeros(n)
        selected = np.argsort(scores, kind="stable")[:m]
        self.selected, self.scores, self.effective = np.sort(selected), scores, {"f": f, "m": m}

        coef = self._weights[selected] / self._weights[selected].sum()
        out = np.empty(self.size, dtype=np.float64)
        for cols in _column_blocks(self.size, n):  # n, not m: the blocks memory_bytes counts
            out[cols] = coef @ rows[selected, cols].astype(np.float64)
        return out.astype(np.float32)


def _block_width(size: int, rows: int) -> int:
    """Columns per float64 working block of ``rows`` rows: about ``_BLOCK_BYTES``."""
    return min(size, max(1024, _BLOCK_BYTES // (8 * max(rows, 1))))


def _column_blocks(size: int, rows: int) -> list[slice]:
    width = _block_width(size, rows)
    return [slice(i, min(i + width, size)) for i in range(0, size, width)]


# -- specs ---------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


def _fmt(v: Any) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v) if isinstance(v, float) else str(v)


def _expect(
    name: str, positional: list[str], keyword: dict[str, str], max_positional: int, keys: tuple[str, ...]
) -> None:
    if len(positional) > max_positional:
        raise ValueError(f"{name} takes {'no' if not max_positional else 'at most one'} unnamed parameter")
    unknown = sorted(set(keyword) - set(keys))
    if unknown:
        raise ValueError(f"{name} has no parameter {', '.join(unknown)} (known: {', '.join(keys)})")


def _number(raw: str, key: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{key}={raw!r} is not finite")
    return v


def _positive(raw: str, key: str) -> float:
    v = _number(raw, key)
    if v <= 0:
        raise ValueError(f"{key} must be positive, got {raw}")
    return v


def _int(raw: str, key: str, lo: int) -> int:
    try:
        v = int(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r} is not an integer") from None
    if v < lo:
        raise ValueError(f"{key} must be at least {lo}, got {raw}")
    return v


def _split_args(argstr: str) -> tuple[list[str], dict[str, str]]:
    """``"0.2"`` or ``"f=2,m=5"`` into unnamed and named parameters (unnamed first)."""
    positional: list[str] = []
    keyword: dict[str, str] = {}
    for part in argstr.split(","):
        part = part.strip()
        if not part:
            raise ValueError("empty parameter")
        key, eq, value = part.partition("=")
        if not eq:
            if keyword:
                raise ValueError(f"unnamed parameter {part!r} after named ones")
            positional.append(part)
            continue
        key, value = key.strip().lower(), value.strip()
        if not key or not value:
            raise ValueError(f"malformed parameter {part!r}")
        if key in keyword:
            raise ValueError(f"parameter {key} given twice")
        keyword[key] = value
    return positional, keyword


AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.name: cls for cls in (FedAvg, ClippedFedAvg, CoordinateMedian, TrimmedMean, MultiKrum)
}


def get_aggregator(
    spec: str = "fedavg", *, bound: NormBound | None = None, memory_limit: int = DEFAULT_MEMORY_LIMIT
) -> Aggregator:
    """The rule a spec string names, e.g. ``"trimmed_mean:0.2"`` or ``"multikrum:f=2,m=5"``.

    ``bound`` makes the rule reject out-of-bounds updates in ``add``; ``memory_limit``
    caps what a buffering rule may allocate per round. Raises ``ValueError`` naming
    ``GRAMMAR`` for a bad spec; ``get_aggregator(s).spec`` is the canonical form.
    """
    if not isinstance(spec, str):
        raise ValueError(f"aggregator spec must be a string, got {type(spec).__name__}; {GRAMMAR}")
    name, colon, argstr = spec.strip().partition(":")
    cls = AGGREGATORS.get(name.strip().lower())
    if cls is None:
        raise ValueError(f"unknown aggregator {name.strip()!r}; known: {', '.join(AGGREGATORS)}; {GRAMMAR}")
    try:
        positional, keyword = _split_args(argstr) if colon else ([], {})
        kwargs = cls._from_args(positional, keyword)
    except ValueError as e:
        raise ValueError(f"bad aggregator spec {spec!r}: {e}; {GRAMMAR}") from None
    return cls(**kwargs, bound=bound, memory_limit=memory_limit)
