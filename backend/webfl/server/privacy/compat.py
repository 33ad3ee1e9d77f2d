"""Which run settings differential privacy composes with, and why the others are refused.

The guarantee rests on one fact: adding or removing one volunteer moves the noised sum
by at most the clip norm ``C``. A setting is allowed only if it keeps that true.
"""

from __future__ import annotations

from ...core.aggregation import get_aggregator, parse_norm_bound
from .settings import DPSettings, Sampling

__all__ = ["check_compatible"]

#: Rules the DP sum cannot stand in for, and why (the 400's message).
_REFUSED = {
    "clipped": "dp clips every update already (dp.clip, fixed or 'adaptive'); the 'clipped' rule's"
    " adaptive bound follows an un-noised median of update norms that no accountant covers: use aggregator 'fedavg'",
    "median": "a coordinate-wise median's sensitivity to one volunteer is not bounded by the clip norm"
    " (each coordinate can jump to a neighbouring order statistic), so noise scaled to C proves nothing",
    "trimmed_mean": "which updates a trimmed mean keeps depends on every other update, so one volunteer can"
    " move it by more than the clip norm and noise scaled to C proves nothing",
    "multikrum": "Multi-Krum's selection depends on all pairwise distances: one volunteer can change which"
    " updates are averaged, a sensitivity far above the clip norm",
}


def check_compatible(dp: DPSettings, *, aggregator: str = "fedavg", mode: str = "sync", norm_bound: str = "none") -> None:
    """``ValueError`` saying why, if ``dp`` cannot be combined with these run settings.

    - ``fedavg``: allowed; the DP sum replaces its example-weighted mean by the plain sum
      of clipped updates over the expected cohort (self-reported example counts as weights
      would let one volunteer claim any share).
    - ``mode`` ``fedbuff``: allowed, each commit is one release charged to the accountant
      (staleness discounts <= 1 keep the bound); Poisson sampling is refused there, since
      a buffer fills with whoever finishes, not with volunteers selected by a coin flip.
    - ``norm_bound``: a fixed bound is a per-volunteer check and is allowed; ``Kx`` (a
      multiple of the recent median norm) lets other volunteers' norms decide who is
      rejected, so it is refused.
    - codecs and server optimizers are post-processing of clipped updates and of the
      release: always allowed.
    """
    name = get_aggregator(aggregator).name
    if name in _REFUSED:
        raise ValueError(f"dp cannot be used with aggregator {aggregator!r}: {_REFUSED[name]}")
    if mode not in ("sync", "fedbuff"):
        raise ValueError(f"unknown mode {mode!r}")
    if mode == "fedbuff" and dp.sampling is Sampling.POISSON:
        raise ValueError(
            "dp.sampling 'poisson' cannot be used with mode 'fedbuff': a FedBuff buffer fills with whoever"
            " finishes first, so the independent sampling that amplification assumes does not hold; use 'none'"
        )
    bound = parse_norm_bound(norm_bound)
    if bound is not None and bound.factor is not None:
        raise ValueError(
            f"dp cannot be used with norm_bound {norm_bound!r}: a bound relative to the median of recent norms"
            " lets other volunteers' updates decide whose update is dropped; use a fixed bound or none"
        )
