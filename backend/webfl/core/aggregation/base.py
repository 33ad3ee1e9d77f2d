"""The aggregation rule interface: a round is ``begin``, ``add`` per update, ``finish``.

Anyone can open the volunteer page, so ``add`` validates before anything touches the
rule's state: the codec checks shape, dtype and finiteness, the rule re-checks them and,
given a ``NormBound``, rejects updates whose L2 norm is out of bounds. A failed ``add``
leaves the rule exactly as it was. A robust rule also states the fewest updates it can
aggregate robustly (``min_count``): ``check_cohort`` refuses a run whose rounds are
smaller, and ``finish`` refuses to commit such a round.
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..codecs import Codec, CodecError, Encoded, RejectionKind
from ..specs import Params
from .bounds import NormBound

__all__ = ["DEFAULT_MEMORY_LIMIT", "Aggregator", "RuleState", "UpdateRejected", "decode_update", "l2norm"]

DEFAULT_MEMORY_LIMIT = 512 * 2**20
# NumPy's casting and reduction buffers and other small arrays, counted once per round.
SLACK_BYTES = 2**20

#: What ``Aggregator.state`` returns: JSON- or npz-serialisable values by name.
RuleState = dict[str, "np.ndarray | float | int | str"]


class UpdateRejected(ValueError):
    """An update that decodes fine but fails a policy check; ``kind`` is ``"norm"``."""

    def __init__(self, message: str, kind: RejectionKind = "norm") -> None:
        super().__init__(message)
        self.kind: RejectionKind = kind


class Aggregator(ABC):
    """One aggregation rule; ``begin``, ``add`` per update, ``finish``, then again.

    ``weight`` is the update's example count. It is self-reported by the volunteer unless
    the server derives it, so rules that must resist hostile clients ignore it or only use
    it among updates they already trust.
    """

    name: ClassVar[str]
    buffered: ClassVar[bool] = False
    #: The keys that unnamed spec parameters stand for, in order (``trimmed_mean:0.2``).
    positional: ClassVar[tuple[str, ...]] = ()

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
        return f"{self.name}:{','.join(f'{k}={fmt(v)}' for k, v in params.items())}" if params else self.name

    def describe(self) -> dict[str, Any]:
        """What a status page shows: name, spec, parameters, memory, last round's facts."""
        return {
            "name": self.name,
            "spec": self.spec,
            "params": self.params(),
            "buffered": self.buffered,
            "memory_limit": self.memory_limit if self.buffered else None,
            "min_count": self.min_count,
            "bound": self.bound.describe() if self.bound is not None else None,
            "count": self.count,
        }

    def __repr__(self) -> str:
        return f"get_aggregator({self.spec!r})"

    @classmethod
    def from_params(cls, p: Params) -> dict[str, Any]:
        """Constructor arguments read from a spec's parameters (the caller refuses leftovers)."""
        return {}

    # -- what a run can ask of the rule ---------------------------------------------

    @property
    def mergeable(self) -> bool:
        """Shares of a round folded elsewhere add up to the round (``FedAvg.merge``); only plain weighted sums."""
        return False

    @property
    def min_count(self) -> int:
        """The fewest updates the rule aggregates as intended (robust rules: more than one)."""
        return 1

    def check_cohort(self, max_updates: int, min_updates: int | None = None) -> None:
        """Raise ``ValueError`` (with a message) if rounds of this size defeat the rule.

        ``max_updates`` is the most updates a round can hold; ``min_updates``, if given,
        the fewest a round may commit with. Allocates nothing; call it at launch.
        """
        max_updates = _positive_int(max_updates, "max_updates")
        need = self.min_count
        if max_updates < need:
            raise ValueError(
                f"{self.spec} needs at least {need} updates a round, but a round holds at most"
                f" {max_updates}: select more clients per round{self._weaker()}"
            )
        if min_updates is not None and _positive_int(min_updates, "min_updates") < need:
            raise ValueError(
                f"{self.spec} needs at least {need} updates a round, but a round may commit with"
                f" {min_updates}: raise min_updates to {need}{self._weaker()}"
            )

    def _weaker(self) -> str:
        """A hint for ``check_cohort``'s message: which parameter asks for less."""
        return ""

    # -- state that lives across rounds ----------------------------------------------

    def state(self) -> RuleState:
        """What the rule learnt across rounds (norm histories), for a checkpoint.

        ``load_state`` on a rule built from the same spec and bound restores it exactly.
        """
        out: RuleState = {"rule": self.spec}
        if self.bound is not None:
            out["bound"] = self.bound.spec
            out["bound_norms"] = self.bound.state()
        out.update(self._state())
        return out

    def load_state(self, state: RuleState) -> None:
        """Restore ``state()``; ``ValueError`` (the rule unchanged) if it does not fit this rule."""
        if not isinstance(state, dict) or state.get("rule") != self.spec:
            got = state.get("rule") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state of rule {got!r} cannot be loaded into {self.spec!r}")
        bound_spec = None if self.bound is None else self.bound.spec
        if state.get("bound") != bound_spec:
            raise ValueError(f"state with norm bound {state.get('bound')!r}, this rule has {bound_spec!r}")
        # The rule's part is validated first; the bound's load is itself all-or-nothing,
        # and ``_load_state`` only assigns: a refused state changes nothing.
        restored = self._check_state(state)
        if self.bound is not None:
            self.bound.load_state(state.get("bound_norms"))
        self._load_state(restored)

    def _state(self) -> RuleState:
        return {}

    def _check_state(self, state: RuleState) -> Any:
        """Validate a rule's own part of ``state``; returns what ``_load_state`` assigns."""
        return None

    def _load_state(self, restored: Any) -> None:
        """Assign what ``_check_state`` validated."""

    # -- memory --------------------------------------------------------------------

    @classmethod
    def memory_bytes(cls, size: int, max_updates: int | None = None) -> int:
        """Peak bytes the rule holds for a round: a float64 accumulator and a float32 temporary."""
        return 12 * size + SLACK_BYTES

    def check_memory(self, size: int, max_updates: int | None = None) -> None:
        """Raise ``ValueError`` if such a round would exceed ``memory_limit`` (allocates nothing).

        ``begin`` checks it too; an admin API can call it to refuse a run up front.
        """
        need = self.memory_bytes(size, max_updates)
        if self.buffered and need > self.memory_limit:
            raise ValueError(
                f"{self.name} needs {mib(need)} to buffer {max_updates} updates of {size}"
                f" parameters, over its {mib(self.memory_limit)} limit;"
                " select fewer clients per round, raise the limit, or use a streaming rule"
            )

    # -- the round ------------------------------------------------------------------

    def begin(self, size: int, max_updates: int | None = None) -> None:
        """Start a round for a model of ``size`` parameters and at most ``max_updates`` updates.

        Raises ``ValueError`` if the round would need more than ``memory_limit`` bytes; the
        previous round's state is dropped either way.
        """
        size = operator.index(size)
        if size < 1:
            raise ValueError(f"model size must be positive, got {size}")
        if max_updates is not None:
            max_updates = _positive_int(max_updates, "max_updates")
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
        """The aggregate float32 delta; ends the round and frees its buffers.

        ``ValueError`` (the round kept open) if it holds fewer than ``min_count`` updates.
        """
        if not self._open:
            raise ValueError(f"{self.name}: no round in progress; call begin() first")
        if not self.count:
            raise ValueError("no updates to aggregate")
        if self.count < self.min_count:
            raise ValueError(f"{self.spec} needs at least {self.min_count} updates, got {self.count}")
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
        u, norm = decode_update(codec, enc, self.size)
        if self.bound is not None and (reason := self.bound.check(norm)) is not None:
            raise UpdateRejected(reason)
        return u, norm


def decode_update(codec: Codec, enc: Encoded, size: int) -> tuple[np.ndarray, float]:
    """An update's float32 vector of ``size`` and its L2 norm; ``CodecError`` if it is not one.

    Every rule's check before its norm bound, and what a cluster follower checks at its
    edge for a rule that folds on the leader (it holds no bound's history).
    """
    u = codec.decode(enc, size)
    # Re-check what the codec promises: a buggy codec must not poison a buffer either.
    if not isinstance(u, np.ndarray) or u.dtype != np.float32 or u.shape != (size,):
        got = f"{getattr(u, 'dtype', type(u).__name__)} {getattr(u, 'shape', '')}"
        raise CodecError(f"codec returned {got}, not {size} float32 values", "shape")
    return u, l2norm(u)


def l2norm(u: np.ndarray) -> float:
    """L2 norm of a float32 vector; ``CodecError`` if it holds NaN or Inf.

    One BLAS dot: a NaN or Inf anywhere makes the sum of squares non-finite, so the
    finiteness check only costs a second pass when that happens.
    """
    sq = float(np.dot(u, u))
    if math.isfinite(sq):
        return math.sqrt(sq)
    if not np.isfinite(u).all():
        raise CodecError("update contains NaN or Inf", "nonfinite")
    return float(np.linalg.norm(u.astype(np.float64)))  # finite, but float32 squares overflowed


def _positive_int(value: int, label: str) -> int:
    value = operator.index(value)
    if value < 1:
        raise ValueError(f"{label} must be positive, got {value}")
    return value


def mib(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


def fmt(v: Any) -> str:
    """A parameter as a spec writes it: integral floats without ``.0``."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v) if isinstance(v, float) else str(v)
