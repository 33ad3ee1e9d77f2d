"""Aggregation rules: how a round's accepted updates become one model delta.

A rule sees a round as three steps: ``begin`` with the model size and the most
updates the round can receive, ``add`` once per update, and ``finish`` for the delta
to apply. Rules are named by spec strings (see ``GRAMMAR`` and ``get_aggregator``),
one a module, as Flower keeps one strategy a file:

* ``fedavg``: example-weighted mean, streamed (McMahan et al. 2017).
* ``clipped``: FedAvg of norm-clipped updates, streamed; fixed or adaptive bound.
* ``coordinate``: ``median``, ``trimmed_mean``, coordinate-wise robust means (Yin et al. 2018).
* ``multikrum``: mean of the updates closest to their neighbours (Blanchard et al. 2017).

``base`` holds the interface (validation, transactional ``add``, ``check_cohort``,
``state``), ``buffered`` the rules that hold a whole round, ``bounds`` the norm bounds
and their grammar, ``registry`` the spec grammar. Streaming rules keep O(size) memory;
buffering rules state their bound (``memory_bytes``).

Example counts (``weight``) are self-reported unless the server derives them: the
coordinate-wise rules ignore them and Multi-Krum only uses them among the selected.
"""

from .base import DEFAULT_MEMORY_LIMIT, Aggregator, RuleState, UpdateRejected, decode_update
from .bounds import MIN_HISTORY, NORM_BOUND_GRAMMAR, PRIOR_MEDIAN_NORM, NormBound, parse_norm_bound
from .clipped import ClippedFedAvg
from .coordinate import CoordinateMedian, TrimmedMean
from .fedavg import FedAvg, PartialSum
from .multikrum import MultiKrum
from .registry import AGGREGATORS, GRAMMAR, get_aggregator

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
    "NORM_BOUND_GRAMMAR",
    "NormBound",
    "PRIOR_MEDIAN_NORM",
    "PartialSum",
    "RuleState",
    "TrimmedMean",
    "UpdateRejected",
    "decode_update",
    "get_aggregator",
    "parse_norm_bound",
]
