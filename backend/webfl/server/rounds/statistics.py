"""Federated feature statistics: how a tabular task without given scaling gets one.

While a task's scaling is still to be measured, each volunteer reports per-feature
count, sum and sum of squares of its rows (``stats``, ``core.stats.FeatureStats``, never
rows). The first run of the task sums the reports of the volunteers connected then and
fixes the pooled mean and standard deviation into the task (``Task.with_scaling``): the
model standardises its raw inputs from model version 0 on.
"""

from __future__ import annotations

from ...core.protocol import Message
from ...core.stats import FeatureStats, scaling_from_stats
from ...core.tasks import Task

__all__ = ["FeatureStatistics"]


class FeatureStatistics:
    """The latest report of each connected volunteer (one each: a volunteer's rows count once)."""

    def __init__(self, num_features: int) -> None:
        self._num_features = num_features
        self._by_peer: dict[str, FeatureStats] = {}

    def __len__(self) -> int:
        return len(self._by_peer)

    def report(self, peer_id: str, msg: Message) -> str | None:
        """Keep one volunteer's statistics; the reason they were refused, or None."""
        try:
            self._by_peer[peer_id] = FeatureStats.from_dict(msg["stats"], self._num_features)
        except ValueError as exc:
            return f"feature statistics: {exc}"
        return None

    def forget(self, peer_id: str) -> None:
        """A volunteer left: its report goes too (memory stays bounded by the connections)."""
        self._by_peer.pop(peer_id, None)

    def scaled(self, task: Task) -> Task:
        """``task`` with the scaling of the pooled reports; ``ValueError`` if there are none."""
        if not self._by_peer:
            raise ValueError(f"task {task.name} has no scaling and no volunteer has reported its feature statistics yet; "
                             "wait for volunteers with data, or give the task a scaling")
        reports = list(self._by_peer.values())
        total = reports[0]
        for r in reports[1:]:
            total = total + r
        mean, std = scaling_from_stats(total)
        return task.with_scaling(mean, std)

