"""Shares of a sync round folded elsewhere: what a round publishes, and what comes back.

In a cluster a follower folds its own volunteers' updates of a streaming round (a rule
that ``mergeable``: plain FedAvg) into a share of the round, and ships the share to the
leader, which merges it (``SyncRounds.merge_share``) instead of folding every update
itself. The leader publishes the round's facts (``RoundFacts``) before any task goes
out, so a follower can vet an update exactly as the leader would (``TaskBook.vet``, the
task token, ``validation.fold``). A round whose rule does not merge (a buffered rule, a
norm bound, clipping, dp) is not folded (``RoundFacts.folded`` false): the follower
vets each update at its edge all the same (``validation.decodes`` instead of the fold)
and ships the frames that pass in batches (``Vetted``), which the leader folds. This
module holds the messages and their wire form (they come from Redis, so they are parsed
strictly) and the seam (``ShareHub``) through which a run mode reaches the cluster
without importing it; one process has none.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ...core.aggregation import PartialSum

__all__ = ["RoundFacts", "Share", "ShareError", "ShareHub", "Sharing", "Vetted"]

#: The longest volunteer id or task name a share may carry (the ids are 12 hex digits).
_MAX_NAME = 64


class ShareError(ValueError):
    """A facts or share message that does not parse, or does not fit the round."""


@dataclass(frozen=True)
class RoundFacts:
    """What a follower needs to vet and fold the updates of one open sync round."""

    task: str
    round: int
    model_version: int
    size: int
    codec: str  # the round's codec spec
    max_examples: int  # an update weighs min(num_examples, max_examples)
    selected: frozenset[str]
    deadline: float  # wall clock (time.time()): processes share no loop clock
    folded: bool = True  # followers fold shares (the rule merges); else they vet and ship the updates

    def to_json(self) -> bytes:
        return json.dumps({
            "task": self.task, "round": self.round, "model_version": self.model_version, "size": self.size, "codec": self.codec,
            "max_examples": self.max_examples, "selected": sorted(self.selected), "deadline": self.deadline, "folded": self.folded,
        }).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RoundFacts:
        try:
            d = json.loads(data)
            if not isinstance(d["folded"], bool):
                raise TypeError(f"folded is {str(d['folded'])[:40]!r}, not a boolean")
            facts = cls(_name(d["task"]), _count(d["round"], 1), _count(d["model_version"]), _count(d["size"], 1), _name(d["codec"]),
                        _count(d["max_examples"], 1), frozenset(map(_name, d["selected"])), float(d["deadline"]), d["folded"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ShareError(f"round facts do not parse: {exc}") from exc
        if not math.isfinite(facts.deadline):
            raise ShareError("round facts: the deadline is not a time")
        return facts


@dataclass(frozen=True)
class Share:
    """One member's share of one round: its partial sum and, per volunteer, what became of its task."""

    member: str
    task: str
    round: int
    partial: PartialSum | None  # None: none of its volunteers' updates was accepted
    accepted: dict[str, tuple[int, int]]  # volunteer -> (num_examples, bytes of its frame)
    reported: frozenset[str]  # volunteers that sent an update, accepted or not
    pending: frozenset[str]  # its selected volunteers still training when it shipped (stragglers)
    rejected: dict[str, int]  # rejection kind -> count, for the round's funnel

    def encode(self) -> bytes:
        """A JSON header, its length first, then the sum's float64 bytes (little-endian)."""
        p = self.partial
        header = json.dumps({
            "member": self.member, "task": self.task, "round": self.round,
            "count": 0 if p is None else p.count, "weight": 0.0 if p is None else p.total_weight,
            "accepted": self.accepted, "reported": sorted(self.reported), "pending": sorted(self.pending), "rejected": self.rejected,
        }).encode()
        body = b"" if p is None else p.sum.astype("<f8", copy=False).tobytes()
        return len(header).to_bytes(4, "little") + header + body

    @classmethod
    def decode(cls, data: bytes, size: int) -> Share:
        """Parse a share for a model of ``size`` parameters; ``ShareError`` if it is not one."""
        try:
            n = int.from_bytes(data[:4], "little")
            d = json.loads(data[4 : 4 + n])
            body = data[4 + n :]
            accepted = {_name(v): (_count(e, 1), _count(b)) for v, (e, b) in d["accepted"].items()}
            count, weight = _count(d["count"]), float(d["weight"])
            share = cls(_name(d["member"]), _name(d["task"]), _count(d["round"], 1), None, accepted,
                        frozenset(map(_name, d["reported"])), frozenset(map(_name, d["pending"])),
                        {_name(k): _count(c, 1) for k, c in d["rejected"].items()})
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise ShareError(f"a share does not parse: {exc}") from exc
        if count != len(accepted) or not share.reported >= set(accepted):
            raise ShareError(f"a share of {count} update(s) names {len(accepted)} accepted volunteer(s)")
        if count == 0:
            if body:
                raise ShareError("a share without updates carries a sum")
            return share
        if len(body) != 8 * size:
            raise ShareError(f"a share's sum has {len(body)} bytes, the model needs {8 * size}")
        partial = PartialSum(np.frombuffer(body, dtype="<f8").astype(np.float64), count, weight)
        return cls(share.member, share.task, share.round, partial, accepted, share.reported, share.pending, share.rejected)


@dataclass(frozen=True)
class Vetted:
    """A batch of a follower's updates of a round that is not folded there: each frame as
    its volunteer sent it, after the follower's edge checks passed; the leader folds them."""

    round: int
    updates: tuple[tuple[str, bytes], ...]  # (volunteer, its update frame)
    refused: tuple[tuple[str, str], ...]  # (volunteer, rejection kind): refused at the edge, for the round's funnel

    def encode(self) -> bytes:
        """A JSON header (the round, the volunteers and their frames' lengths, the refusals), its
        length first, then the frames."""
        header = json.dumps({"round": self.round, "volunteers": [v for v, _ in self.updates], "sizes": [len(f) for _, f in self.updates],
                             "refused": [list(r) for r in self.refused]}).encode()
        return len(header).to_bytes(4, "little") + header + b"".join(f for _, f in self.updates)

    @classmethod
    def decode(cls, data: bytes, max_frame_bytes: int) -> Vetted:
        """Parse a batch whose frames hold at most ``max_frame_bytes`` each; ``ShareError`` if it is not one."""
        try:
            n = int.from_bytes(data[:4], "little")
            d = json.loads(data[4 : 4 + n])
            round_, volunteers, sizes = _count(d["round"], 1), [_name(v) for v in d["volunteers"]], [_count(b, 1) for b in d["sizes"]]
            refused = tuple((_name(v), _name(k)) for v, k in d["refused"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ShareError(f"a batch of updates does not parse: {exc}") from exc
        body = memoryview(data)[4 + n :]
        if len(volunteers) != len(sizes) or sum(sizes) != len(body) or max(sizes, default=0) > max_frame_bytes:
            raise ShareError(f"a batch of {len(volunteers)} update(s) with {len(sizes)} size(s) of {sum(sizes)} bytes does not fit "
                             f"its {len(body)} bytes (at most {max_frame_bytes} a frame)")
        ends = np.cumsum(sizes, dtype=np.int64).tolist()
        return cls(round_, tuple((v, bytes(body[end - b : end])) for v, b, end in zip(volunteers, sizes, ends)), refused)


class ShareHub(Protocol):
    """The cluster's side of shared rounds, as a run mode sees it (``cluster.partial``)."""

    async def open(self, facts: RoundFacts) -> None:
        """Publish a round's facts before its tasks go out."""

    async def ask(self, task: str, round_: int, volunteers: set[str]) -> set[str]:
        """Ask the members holding any of ``volunteers`` to ship their shares now; which of them those members hold."""

    def home_of(self, volunteer: str) -> str | None:
        """The member whose socket holds ``volunteer``, if it is not the leader's own."""


class Sharing:
    """The engine's slot for the cluster's hub: empty in one process, set while this member leads."""

    def __init__(self) -> None:
        self.hub: ShareHub | None = None


def _name(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_NAME:
        raise ValueError(f"not a name: {str(value)[:40]!r}")
    return value


def _count(value: object, least: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"not an integer >= {least}: {str(value)[:40]!r}")
    return value
