"""Update validation: the verdict on one update, and rejection bookkeeping.

Every refused frame or update is counted under a short reason key (``REASONS``) that the
admin status shows as ``"rejections"``. The checks run, in this order, before anything
touches the round's accumulator (or FedBuff's buffer): the update matches a task of this
volunteer (``TaskBook.match``: round open, a task of that round, one update per round,
model version); then ``check``: the task's session token, codec and example count (a
mode's own policy, FedBuff's staleness, comes next); last ``fold``: the codec (dtype,
shape, finiteness) and the L2 norm bound inside ``Aggregator.add``, which leaves the rule
unchanged on failure. The kind of a refused fold is carried by the exception.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ...core.aggregation import Aggregator, UpdateRejected, decode_update
from ...core.codecs import Codec, CodecError, Encoded
from ...core.protocol import Message
from ..privacy.run import DPRule

__all__ = ["ACCEPTED", "MAX_EXAMPLES_PER_UPDATE", "REASONS", "Rejections", "Verdict", "check", "decodes", "fold", "payload"]

MAX_EXAMPLES_PER_UPDATE = 10_000_000

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
    "stats": "feature statistics refused (malformed, impossible sums, or the task's scaling is fixed already)",
    "eval": "an evaluation report refused (unknown or old model, second report, sums that do not add up)",
    "protocol": "a frame that breaks the protocol (connection closed)",
    "secagg": "a secure-aggregation frame refused: malformed, out of stage or from outside the cohort (connection closed)",
    "rate": "over a rate limit (connection closed)",
    "connections": "too many connections from one address (refused)",
    "idle": "nothing received for too long (connection closed)",
}


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str | None = None
    #: Short key of the rejection, counted in ``status()["rejections"]`` (see ``REASONS``).
    kind: str | None = None


ACCEPTED = Verdict(True)


def check(tokens_ok: bool, msg: Message, codec: Codec) -> Verdict | None:
    """The checks every mode makes on an update for its task; ``None`` if it passes.

    ``tokens_ok``: the update echoes the token of the task it matched, which proves it
    answers that task on this very connection.
    """
    if not tokens_ok:
        return Verdict(False, "the session token does not match this connection's task", "token")
    if msg["codec"] != codec.spec:
        return Verdict(False, f"this round uses codec {codec.spec!r}, not {msg['codec']!r}", "codec")
    if not 0 < msg["num_examples"] <= MAX_EXAMPLES_PER_UPDATE:
        return Verdict(False, f"num_examples must be in 1..{MAX_EXAMPLES_PER_UPDATE}", "num_examples")
    return None


def payload(msg: Message) -> Encoded:
    return Encoded(msg["codec_params"], msg.arrays)


#: The core's rejection kinds (``CodecError.kind``, ``UpdateRejected.kind``) as the admin
#: status counts them; "nan" keeps the key the API has always reported.
FOLD_REASONS = {"nonfinite": "nan", "shape": "malformed", "malformed": "malformed", "norm": "norm"}


def fold(aggregator: Aggregator, codec: Codec, enc: Encoded, weight: float, clipped: bool | None = None) -> Verdict | None:
    """Fold one update into ``aggregator`` (unchanged if it refuses); ``None`` if it took it.

    ``clipped`` (the update's own report) only reaches the DP release, the one rule that counts it.
    """
    try:
        if isinstance(aggregator, DPRule):
            aggregator.add(codec, enc, weight, clipped)
        else:
            aggregator.add(codec, enc, weight)
    except (CodecError, UpdateRejected) as exc:
        return Verdict(False, f"invalid update: {exc}", FOLD_REASONS[exc.kind])
    except ValueError as exc:
        return Verdict(False, f"invalid update: {exc}", "malformed")
    return None


def decodes(codec: Codec, enc: Encoded, size: int) -> Verdict | None:
    """``fold``'s checks before the rule's own (codec, dtype, shape, finiteness), folding
    nothing; ``None`` if they pass. A cluster follower's edge check for a rule the leader folds."""
    try:
        decode_update(codec, enc, size)
    except CodecError as exc:
        return Verdict(False, f"invalid update: {exc}", FOLD_REASONS[exc.kind])
    except ValueError as exc:
        return Verdict(False, f"invalid update: {exc}", "malformed")
    return None


class Rejections(Counter):
    """Counts per reason key; ``to_dict`` for the admin status."""

    def add(self, reason: str) -> None:
        self[reason if reason in REASONS else "malformed"] += 1

    def to_dict(self) -> dict[str, int]:
        return dict(sorted(self.items()))
