"""The privacy accountant: Google's ``dp-accounting``, composed once per committed round.

Its state is only how many rounds ran with each mechanism (noise multipliers and
sampling rate): ``dp-accounting``'s answer is a function of that multiset, so rebuilding
from the counts after a restart gives exactly the epsilon before it. ``state()`` is what
the engine writes in the checkpoint transaction with the round it charges.

Sampling ``none`` charges each round as the full Gaussian mechanism (no amplification);
``poisson`` as a Poisson-subsampled one with rate ``q``. The neighbouring relation is
add-or-remove one volunteer (user-level DP), the one the clip-norm sensitivity bounds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import dp_accounting
from dp_accounting import pld, rdp

from ...core.privacy import Mechanism
from .settings import AccountantKind

__all__ = ["Accountant"]

#: A mechanism as the state stores it: (sampling rate or None, noise multipliers).
Key = tuple[float | None, tuple[float, ...]]


def _event(key: Key) -> dp_accounting.DpEvent:
    q, multipliers = key
    event = dp_accounting.GaussianDpEvent(Mechanism(*multipliers).effective_multiplier)
    return event if q is None else dp_accounting.PoissonSampledDpEvent(q, event)


class Accountant:
    """Rounds charged per mechanism; ``epsilon(delta)`` composes them all."""

    def __init__(self, kind: AccountantKind = AccountantKind.RDP, rounds: Counter[Key] | None = None) -> None:
        self.kind = AccountantKind(kind)
        self._rounds: Counter[Key] = Counter(rounds or {})

    @staticmethod
    def key(mechanism: Mechanism, sampling_rate: float | None) -> Key:
        if sampling_rate is not None and not 0.0 < sampling_rate <= 1.0:
            raise ValueError(f"sampling rate must be in (0, 1], got {sampling_rate!r}")
        return (sampling_rate, mechanism.multipliers)

    @property
    def rounds(self) -> int:
        return sum(self._rounds.values())

    def charge(self, mechanism: Mechanism, sampling_rate: float | None = None) -> None:
        """One committed release (call it in the commit's transaction, once)."""
        self._rounds[self.key(mechanism, sampling_rate)] += 1

    def _build(self, extra: Key | None = None) -> dp_accounting.PrivacyAccountant:
        acc = rdp.RdpAccountant() if self.kind is AccountantKind.RDP else pld.PLDAccountant()
        counts = Counter(self._rounds)
        if extra is not None:
            counts[extra] += 1
        for key, n in sorted(counts.items(), key=repr):
            acc.compose(_event(key), n)
        return acc

    def epsilon(self, delta: float, *, extra: Key | None = None) -> float | None:
        """Epsilon at ``delta`` of everything charged (plus ``extra``); ``None`` if unbounded.

        Zero rounds cost nothing (0.0); a round without noise has no finite epsilon.
        """
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        keys = set(self._rounds) | ({extra} if extra else set())
        if not keys:
            return 0.0
        if any(0.0 in multipliers for _, multipliers in keys):
            return None
        eps = self._build(extra).get_epsilon(delta)
        return eps if math.isfinite(eps) else None

    def would_exceed(self, mechanism: Mechanism, max_epsilon: float, delta: float, sampling_rate: float | None = None) -> bool:
        """Whether one more round of ``mechanism`` would take epsilon past ``max_epsilon``: ask before a round."""
        eps = self.epsilon(delta, extra=self.key(mechanism, sampling_rate))
        return eps is None or eps > max_epsilon

    def state(self) -> dict:
        """JSON-able counts: what the checkpoint stores."""
        entries = [{"q": q, "noise": list(m), "rounds": n} for (q, m), n in sorted(self._rounds.items(), key=repr)]
        return {"accountant": self.kind.value, "events": entries}

    @classmethod
    def from_state(cls, state: dict) -> Accountant:
        """The accountant ``state()`` was taken from; ``ValueError`` for a malformed one."""
        try:
            kind = AccountantKind(state["accountant"])
            rounds: Counter[Key] = Counter()
            for e in state["events"]:
                q = None if e["q"] is None else float(e["q"])
                multipliers = tuple(float(z) for z in e["noise"])
                n = e["rounds"]
                if not multipliers or not all(math.isfinite(z) and z >= 0 for z in multipliers):
                    raise ValueError(f"bad noise multipliers in {e!r}")
                if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                    raise ValueError(f"bad round count in {e!r}")
                rounds[cls.key(Mechanism(*multipliers), q)] += n
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed accountant state: {exc!r}") from None
        return cls(kind, rounds)

    @classmethod
    def combined(cls, states: Iterable[dict], kind: AccountantKind = AccountantKind.RDP) -> Accountant:
        """All runs' rounds composed: a task's total (the same volunteers may join every run)."""
        total: Counter[Key] = Counter()
        for s in states:
            total.update(cls.from_state(s)._rounds)
        return cls(kind, total)
