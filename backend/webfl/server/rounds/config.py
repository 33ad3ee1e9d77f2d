"""A run's settings (``POST /api/rounds``), parsed once into a typed, frozen ``RunConfig``.

Spec strings (codec, downlink, norm bound, rule, server optimizer) are parsed here at
the boundary; everything after works on the parsed objects. Training settings are
checked against the learning core's own ``training.BOUNDS``, so a run can never hand
out a task the volunteers would refuse. ``to_dict`` gives the JSON the admin API shows
and the store keeps; ``from_json(to_dict())`` parses it back (that is how a run resumes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

from ...core.aggregation import NORM_BOUND_GRAMMAR, Aggregator, NormBound, get_aggregator, parse_norm_bound
from ...core.codecs import Codec, get_codec
from ...core.downlink import Downlink, get_downlink
from ...core.server_opt import ServerOptimizer, get_server_opt
from ...core.training import BOUNDS, check_bounds
from ..privacy import DPSettings, check_compatible
from ..privacy.run import DPRule
from ..secagg import SecAggSettings
from .funnel import capped_weight
from .validation import MAX_EXAMPLES_PER_UPDATE

__all__ = ["LIMITS", "MODES", "NormSpec", "RunConfig"]

#: The run modes (``rounds/sync.py``, ``rounds/fedbuff.py``).
MODES = ("sync", "fedbuff")


@dataclass(frozen=True)
class NormSpec:
    """A checked ``norm_bound`` (core grammar: ``NORM_BOUND_GRAMMAR``); each run builds its own
    ``NormBound`` from it, since a bound learns a norm history."""

    text: str = "none"

    @classmethod
    def parse(cls, spec: object) -> NormSpec:
        if spec is None:
            return cls()
        if not isinstance(spec, str):
            raise ValueError(f"must be a string or null; {NORM_BOUND_GRAMMAR}")
        parse_norm_bound(spec)  # SpecError (a ValueError) names the bad part
        return cls(spec)

    def build(self) -> NormBound | None:
        return parse_norm_bound(self.text)


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _checked(build: Callable[[str], object]) -> Callable[[str], str]:
    """Keep the text as given (the API echoes it) once ``build`` accepts it."""

    def parse(value: str) -> str:
        build(value)
        return value

    return parse


def _string(parse: Callable[[str], object]) -> Callable[[object], object]:
    def checked(value: object) -> object:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return parse(value)

    return checked


#: Parsers of the spec fields: text in, parsed value out, ``ValueError`` if bad.
_SPECS: dict[str, Callable[[object], object]] = {
    "codec": _string(get_codec),
    "downlink": get_downlink,
    "aggregator": _string(_checked(get_aggregator)),
    "norm_bound": NormSpec.parse,
    "mode": _string(_choice(MODES)),
    "server_opt": _string(_checked(get_server_opt)),
}

#: Numeric fields: (low, high, low end included). Training settings are the core's.
LIMITS: dict[str, tuple[float, float, bool]] = {
    "rounds": (1, 100_000, True),
    "clients_per_round": (1, 100_000, True),
    "local_epochs": BOUNDS["epochs"],
    "batch_size": BOUNDS["batch_size"],
    "lr": BOUNDS["lr"],
    "deadline_s": (0.1, 86_400.0, True),
    "min_updates": (1, 100_000, True),
    "max_examples": (1, MAX_EXAMPLES_PER_UPDATE, True),
    "over_selection": (1.0, 10.0, True),
    "select_timeout_s": (0.0, 86_400.0, True),
    "prox_mu": BOUNDS["prox_mu"],
    "buffer_size": (1, 100_000, True),
    "max_staleness": (0, 1_000_000, True),
    "staleness_exponent": (0.0, 10.0, True),
    "max_wait_s": (0.0, 3_600.0, True),
}


@dataclass(frozen=True)
class RunConfig:
    """The settings of one run of rounds."""

    rounds: int = 1
    clients_per_round: int = 10
    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 0.1
    deadline_s: float = 60.0
    min_updates: int = 1
    #: The most weight one update carries in the mean: ``min(num_examples, max_examples)``
    #: (a cap, not a rejection), so one volunteer with a large file cannot outvote the rest.
    max_examples: int = 1_000
    #: Select this many times ``clients_per_round`` and close the round at
    #: ``clients_per_round`` updates, so stragglers and drop-outs don't hold it up.
    over_selection: float = 1.0
    #: How long to wait for ``clients_per_round * over_selection`` ready volunteers
    #: before starting with fewer (but at least ``min_updates``).
    select_timeout_s: float = 5.0
    codec: Codec = field(default_factory=lambda: get_codec("none"))
    #: How the global model reaches volunteers: none | fp16 | delta:SPEC (core/downlink.py).
    downlink: Downlink = field(default_factory=lambda: get_downlink("none"))
    aggregator: str = "fedavg"
    #: Reject updates by L2 norm: "none" (or null), "C" (fixed) or "x=K" (K x recent median).
    norm_bound: NormSpec = field(default_factory=NormSpec)
    #: ``sync`` (rounds with a barrier) or ``fedbuff`` (buffered asynchronous).
    mode: str = "sync"
    #: Server optimizer on the aggregated delta (``core.server_opt``).
    server_opt: str = "fedavg"
    #: FedProx proximal term for the volunteers' local training.
    prox_mu: float = 0.0
    #: FedBuff: commit every ``buffer_size`` accepted updates.
    buffer_size: int = 10
    #: FedBuff: refuse updates more than this many model versions old.
    max_staleness: int = 10
    #: FedBuff: an update ``s`` versions stale weighs ``(1 + s) ** -staleness_exponent``.
    staleness_exponent: float = 0.5
    #: Pace steering: the longest "come back in" delay; 0 turns pace steering off.
    max_wait_s: float = 30.0
    #: Differential privacy (``server/privacy``, docs/privacy.md); ``None``: updates are not private.
    dp: DPSettings | None = None
    #: Secure aggregation (``server/secagg``, docs/secagg.md); ``None``: updates arrive in the clear.
    secagg: SecAggSettings | None = None

    def __post_init__(self) -> None:
        for name, kind in (("codec", Codec), ("downlink", Downlink), ("norm_bound", NormSpec)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"{name} must be a parsed {kind.__name__}; build settings from text with RunConfig.from_json")

    @classmethod
    def from_json(cls, data: object) -> RunConfig:
        """Validate an admin request body; ``ValueError`` names the offending field."""
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = data.keys() - known.keys()
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        values = {name: _parse(name, value, known[name].type) for name, value in data.items() if name not in ("dp", "secagg")}
        config = cls(**values)
        if config.min_updates > config.clients_per_round:
            raise ValueError("min_updates cannot exceed clients_per_round")
        if data.get("dp") is not None:
            # The divisor m of the release is the cohort a commit expects: a round's or a buffer's.
            cohort = config.buffer_size if config.mode == "fedbuff" else config.clients_per_round
            dp = DPSettings.from_json(data["dp"], expected_cohort=cohort)
            check_compatible(dp, aggregator=config.aggregator, mode=config.mode, norm_bound=config.norm_bound.text)
            config = replace(config, dp=dp)
        if data.get("secagg") is not None:
            config = replace(config, secagg=_secagg(config, data["secagg"]))
        return config

    def rule(self) -> Aggregator:
        """A new aggregation rule for this run, with its own norm bound: the DP release
        (``DPRule``) in a dp run, which stands in for ``fedavg``."""
        if self.dp is not None:
            return DPRule(self.dp, bound=self.norm_bound.build())
        return get_aggregator(self.aggregator, bound=self.norm_bound.build())

    def weight(self, num_examples: int, discount: float = 1.0) -> float:
        """An update's weight in the rule: ``min(num_examples, max_examples)`` times a
        discount (FedBuff's staleness); in a dp run the discount alone, since example
        counts are self-reported and one volunteer must move the sum by at most ``C``."""
        return discount if self.dp is not None else capped_weight(num_examples, self.max_examples) * discount

    def optimizer(self) -> ServerOptimizer:
        """A new server optimizer for this run."""
        return get_server_opt(self.server_opt)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["codec"], out["downlink"], out["norm_bound"] = self.codec.spec, self.downlink.spec, self.norm_bound.text
        out["dp"] = None if self.dp is None else self.dp.to_json()
        out["secagg"] = None if self.secagg is None else self.secagg.to_json()
        return out


def _secagg(config: RunConfig, body: object) -> SecAggSettings:
    """The ``secagg`` setting, refused (saying why) with what needs individual updates."""
    why = None
    if config.mode != "sync":
        why = "FedBuff commits buffers that fill one update at a time; secure aggregation unmasks only a whole round's sum"
    elif (rule := get_aggregator(config.aggregator).name) != "fedavg":
        why = f"aggregator {config.aggregator!r} needs each update ({rule} looks at them one by one); the server sees only their sum"
    elif config.norm_bound.text != "none":
        why = "a norm bound checks each update's norm, which secure aggregation hides; the clip bounds every update instead"
    elif config.codec.spec != "none":
        why = f"codec {config.codec.spec!r}: secure aggregation quantizes updates itself (secagg.bits); use codec 'none'"
    elif config.dp is not None and config.dp.adaptive is not None:
        why = "adaptive clipping counts each update's clipped bit, which secure aggregation hides; use a fixed dp.clip"
    elif config.min_updates < 2:
        why = "min_updates must be at least 2: the sum of a single update is that update"
    if why is not None:
        raise ValueError(f"secagg cannot be used here: {why}")
    cohort = math.ceil(config.clients_per_round * config.over_selection)
    return SecAggSettings.from_json(body, cohort=cohort, dp_clip=None if config.dp is None else config.dp.clip)


def _parse(name: str, value: object, kind: str) -> object:
    if name in _SPECS:
        try:
            return _SPECS[name](value)
        except (ValueError, OverflowError) as exc:  # OverflowError: a parameter too big for the rule
            raise ValueError(f"{name}: {exc}") from None
    integer = kind == "int"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (integer and value != int(value)):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}")
    check_bounds(name, value, LIMITS[name])
    return int(value) if integer else float(value)
