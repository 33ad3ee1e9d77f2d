"""Aggregator specs: the grammar, the rules by name, and ``get_aggregator``."""

from __future__ import annotations

from ..specs import Params, SpecError, parse_spec
from .base import DEFAULT_MEMORY_LIMIT, Aggregator
from .bounds import NormBound
from .clipped import ClippedFedAvg
from .coordinate import CoordinateMedian, TrimmedMean
from .fedavg import FedAvg
from .multikrum import MultiKrum

__all__ = ["AGGREGATORS", "GRAMMAR", "get_aggregator"]

GRAMMAR = (
    "aggregator spec: fedavg | clipped[:C | :x=K[,window=N][,init=C0]] | median"
    " | trimmed_mean[:BETA] (0 <= BETA < 0.5) | multikrum[:f=F][,m=M]"
)
WHAT = "aggregator spec"

AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.name: cls for cls in (FedAvg, ClippedFedAvg, CoordinateMedian, TrimmedMean, MultiKrum)
}


def get_aggregator(
    spec: str = "fedavg", *, bound: NormBound | None = None, memory_limit: int = DEFAULT_MEMORY_LIMIT
) -> Aggregator:
    """The rule a spec string names, e.g. ``"trimmed_mean:0.2"`` or ``"multikrum:f=2,m=5"``.

    ``bound`` makes the rule reject out-of-bounds updates in ``add``; ``memory_limit``
    caps what a buffering rule may allocate per round. Raises ``SpecError`` (a
    ``ValueError``) naming the bad part and ``GRAMMAR``; ``get_aggregator(s).spec`` is
    the canonical form.
    """
    parsed = parse_spec(spec, what=WHAT, grammar=GRAMMAR)
    cls = AGGREGATORS.get(parsed.name)
    if cls is None:
        raise SpecError(WHAT, spec, parsed.name, f"unknown aggregator; known: {', '.join(AGGREGATORS)}", GRAMMAR)
    params = Params(parsed, spec, what=WHAT, grammar=GRAMMAR, positional=cls.positional)
    kwargs = cls.from_params(params)
    params.done()
    return cls(**kwargs, bound=bound, memory_limit=memory_limit)
