"""A round's cohort funnel, and the engine's own round counters.

The funnel answers "where did the volunteers go?" for one round (FedBuff: one buffer):

- ``connected``, ``ready``: volunteers connected, and ready to train, when the cohort
  was picked (FedBuff: when the buffer opened);
- ``selected``: given a task (FedBuff: tasks dispatched while the buffer filled);
- ``trained``: the task frame was queued on their connection (they train on it);
- ``reported``: sent an update (whatever its verdict); ``accepted``: folded in;
- ``rejected``: refused updates by reason (``validation.REASONS``), from anyone, while
  the round was open;
- ``dropouts``: trained, never reported and no longer training at the close (left, or
  came back without the task); ``stragglers``: still training at the close;
- ``examples``: the example counts behind the accepted updates (``min``, ``median``,
  ``max``), ``top_share``: the largest single update's share of the averaging weight,
  and ``capped``: how many updates had their weight cut to ``max_examples``.

``RoundStats`` times commits, for ``/metrics`` (abandoned rounds are counted from the
store, where each is recorded with its reason and funnel, so the count survives restarts).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable

import numpy as np

__all__ = ["ABANDON_REASONS", "COMMIT_BUCKETS", "Funnel", "RoundStats", "capped_weight"]

#: Why a round was abandoned (the model unchanged).
ABANDON_REASONS = {
    "too_few_updates": "fewer accepted updates than min_updates by the close",
    "refused_aggregate": "the aggregate or the model it gives was refused (non-finite, exploding)",
    "secagg_cohort": "secure aggregation: the cohort selected is too small for the threshold or min_updates",
    "unmask_failed": "secure aggregation: too few survivors revealed their shares to rebuild someone's secrets",
}

#: Commit (aggregate, server step, evaluation, checkpoint, broadcast) times in seconds:
#: the softmax model commits in milliseconds, the 2NN with a robust rule in seconds.
COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def capped_weight(num_examples: int, max_examples: int) -> float:
    """The weight an update carries in the mean: its example count, at most ``max_examples``."""
    return float(min(num_examples, max_examples))


class Funnel:
    """The funnel of one open round; ``to_dict`` for the status and the history.

    Tasks are named by a key: the volunteer's id in a sync round (one task each), the
    volunteer and the task's number under FedBuff (a volunteer may train several times
    while one buffer fills).
    """

    def __init__(self, connected: int, ready: int, max_examples: int) -> None:
        self.connected, self.ready, self.max_examples = connected, ready, max_examples
        self.selected = 0
        self.trained: set[Hashable] = set()
        self.reported: set[Hashable] = set()
        self.rejected: Counter[str] = Counter()
        self._examples: list[int] = []
        self.dropouts = self.stragglers = 0

    def task_sent(self, key: Hashable, delivered: bool) -> None:
        self.selected += 1
        if delivered:
            self.trained.add(key)

    def report(self, key: Hashable) -> None:
        """An update arrived for the task ``key`` (counted once, whatever its verdicts)."""
        self.reported.add(key)

    def reject(self, kind: str) -> None:
        self.rejected[kind] += 1

    def accept(self, num_examples: int) -> None:
        self._examples.append(num_examples)

    def close(self, still_training: Iterable[Hashable]) -> None:
        """At the close: tasks still being trained (stragglers); the others never reported (drop-outs)."""
        training = set(still_training) & self.trained
        self.stragglers = len(training)
        self.dropouts = len(self.trained - training - self.reported)

    @property
    def accepted(self) -> int:
        return len(self._examples)

    def to_dict(self) -> dict:
        counts = np.asarray(self._examples, dtype=np.int64)
        weights = np.minimum(counts, self.max_examples)
        examples = None
        if counts.size:
            examples = {
                "min": int(counts.min()),
                "median": float(np.median(counts)),
                "max": int(counts.max()),
                "top_share": float(weights.max() / weights.sum()),
            }
        return {
            "connected": self.connected,
            "ready": self.ready,
            "selected": self.selected,
            "trained": len(self.trained),
            "reported": len(self.reported),
            "accepted": self.accepted,
            "rejected": dict(sorted(self.rejected.items())),
            "dropouts": self.dropouts,
            "stragglers": self.stragglers,
            "capped": int((counts > self.max_examples).sum()),
            "max_examples": self.max_examples,
            "examples": examples,
        }


class RoundStats:
    """How long commits took since the server started (the rounds themselves are in the store)."""

    def __init__(self) -> None:
        self._commit_counts = np.zeros(len(COMMIT_BUCKETS), dtype=np.int64)
        self.commits = 0
        self.commit_seconds_sum = 0.0

    def commit_took(self, seconds: float) -> None:
        self._commit_counts += np.asarray(COMMIT_BUCKETS) >= seconds
        self.commits += 1
        self.commit_seconds_sum += seconds

    def to_dict(self) -> dict:
        return {
            "commit_seconds": {
                "buckets": [[b, int(c)] for b, c in zip(COMMIT_BUCKETS, self._commit_counts)],
                "count": self.commits,
                "sum": self.commit_seconds_sum,
            },
        }
