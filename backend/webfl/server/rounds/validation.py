"""Update validation policy: the norm bound of a run and rejection bookkeeping.

Every refused frame or update is counted under a short reason key (``REASONS``) that the
admin status shows as ``"rejections"``. The checks run, in this order, before anything
touches the round's accumulator (or FedBuff's buffer): the update matches a task of this
volunteer (sync: round open, volunteer selected, one update per round, model version;
FedBuff: an outstanding task of that round and model); then, the same code in both modes
(``RoundEngine.check_update``), the task's session token, codec and example count
(FedBuff then refuses stale updates); last, in ``engine.add_update``, the codec (dtype,
shape, finiteness) and the L2 norm bound inside ``Aggregator.add`` (which leaves the rule
unchanged on failure).
"""

from __future__ import annotations

from collections import Counter

from ..core.aggregation import NormBound, UpdateRejected
from ..core.codecs import CodecError

__all__ = ["REASONS", "Rejections", "classify_update_error", "parse_norm_bound"]

REASONS = {
    "round": "the round is not open or the update names another round",
    "not_selected": "the volunteer holds no task for the round (not selected, or its FedBuff task expired)",
    "duplicate": "a second update from one volunteer in one round",
    "token": "missing or wrong session token (replayed or forged update)",
    "model_version": "the update was trained on another model version",
    "stale": "FedBuff: the update's model is more than max_staleness versions old",
    "codec": "the update uses another codec than the round",
    "num_examples": "example count out of range",
    "nan": "the update holds NaN or Inf",
    "malformed": "wrong dtype, shape or codec parameters",
    "norm": "the update's L2 norm is out of bounds",
    "protocol": "a frame that breaks the protocol (connection closed)",
    "rate": "over a rate limit (connection closed)",
    "connections": "too many connections from one address (refused)",
    "idle": "nothing received for too long (connection closed)",
}


def parse_norm_bound(spec: str | None) -> NormBound | None:
    """``None``/``"none"``: no bound; ``"5.0"``: fixed; ``"x=5"`` or ``"5x"``: 5 times the recent median norm.

    ``"5.0,x=3"`` gives both (the smaller applies). ``ValueError`` for anything else.
    """
    if spec is None:
        return None
    s = spec.strip().lower()
    if s in ("", "none"):
        return None
    max_norm = factor = None
    try:
        for part in s.split(","):
            part = part.strip()
            if part.startswith("x="):
                factor = float(part[2:])
            elif part.endswith("x"):
                factor = float(part[:-1])
            else:
                max_norm = float(part)
        return NormBound(max_norm=max_norm, factor=factor)
    except ValueError:
        raise ValueError(f"bad norm_bound {spec!r}: use null, a number C (fixed bound) or x=K (K times the recent median norm)") from None


def classify_update_error(exc: Exception) -> str:
    if isinstance(exc, UpdateRejected):
        return "norm"
    if isinstance(exc, CodecError) and "nan" in str(exc).lower():
        return "nan"
    return "malformed"


class Rejections(Counter):
    """Counts per reason key; ``to_dict`` for the admin status."""

    def add(self, reason: str) -> None:
        self[reason if reason in REASONS else "malformed"] += 1

    def to_dict(self) -> dict[str, int]:
        return dict(sorted(self.items()))
