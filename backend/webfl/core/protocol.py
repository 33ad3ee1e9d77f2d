"""The wire format: versioned binary frames of a JSON header and raw arrays.

Layout of one WebSocket binary message::

    b"WFL" + PROTOCOL_VERSION (1 byte) | header length (uint32 LE) | header (UTF-8 JSON)
    | zero padding to a multiple of 8 | array 0 | padding | array 1 | ...

The header names the message ``type``, its fields, and ``arrays``: one
``[dtype, shape]`` per array, each little-endian and 8-byte aligned so the receiver
reads it in place with ``np.frombuffer``. Every frame is validated against
the schema of its type before anything acts on it; see ``docs/protocol.md``.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "HISTORY_KEPT",
    "PROTOCOL_VERSION",
    "Message",
    "ProtocolError",
    "decode",
    "encode",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_UNSUPPORTED",
    "CLOSE_POLICY",
    "CLOSE_TOO_BIG",
    "CLOSE_INTERNAL",
    "CLOSE_TRY_LATER",
]

PROTOCOL_VERSION = 1
MAGIC = b"WFL" + bytes([PROTOCOL_VERSION])
_PREFIX = struct.Struct("<4sI")
MAX_HEADER_BYTES = 64 * 1024
MAX_ARRAYS = 16
MAX_DIMS = 4

# WebSocket close codes (RFC 6455) used with a human-readable reason.
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013

DTYPES = frozenset({"<f4", "<f2", "<f8", "|u1", "|i1", "<u2", "<u4", "<i4"})

# Field schemas per message type: name -> accepted Python types. ``None`` in the
# tuple means the field may be null. Fields not listed are refused, so a header
# cannot smuggle data past validation.
_NUM = (int, float)
# The federation's progress, for every volunteer: the ``status`` frame, and a commit's
# ``model_notice``. ``history_from``: the index in the server's history of the first entry
# of ``history`` (the receiver keeps those before it); absent: ``history`` is all of it.
_STATUS = {"state": (str,), "round": (int,), "connected": (int,), "history": (list,), "history_from": (int,),
           "run": (list, None), "privacy": (dict, None), "ended": (str, None)}
SCHEMAS: dict[str, dict[str, tuple]] = {
    # volunteer -> server
    "hello": {
        "version": (str,),
        "codecs": (list,),
        "agent": (str,),
        "model_version": (int,),
        "model_digest": (str,),
        "resume": (dict,),  # {"volunteer": id, "token": welcome's resume}: keep that id
        "task": (str,),  # the task to train; absent: the server's default task
    },
    "ready": {"num_examples": (int,)},
    # the sums of the model of that version on the volunteer's holdout (core.evaluation)
    "eval": {"model_version": (int,), "sums": (dict,)},
    # a tabular task without scaling: this volunteer's per-feature sums (core.stats)
    "stats": {"stats": (dict,)},
    "pause": {},
    "update": {
        "round": (int,),
        "model_version": (int,),
        "num_examples": (int,),
        "loss": _NUM,
        "accuracy": _NUM,
        "codec": (str,),
        "codec_params": (dict,),
        "token": (str,),
        # DP runs: whether the volunteer had to clip its delta (adaptive clipping's bit)
        "clipped": (bool,),
    },
    # secure aggregation (core/secagg/wire.py, docs/protocol.md): ``session`` is the round's SecAgg id
    "sa_keys": {"session": (int,)},
    "sa_shares": {"session": (int,)},
    "sa_masked": {"session": (int,), "round": (int,), "model_version": (int,), "num_examples": (int,), "loss": _NUM,
                  "accuracy": _NUM, "token": (str,)},
    "sa_reveal": {"session": (int,)},
    # server -> volunteer
    "sa_roster": {"session": (int,)},
    "sa_inbox": {"session": (int,)},
    "sa_unmask": {"session": (int,)},
    "welcome": {"version": (str,), "volunteer": (str,), "task": (dict,), "shard": (dict, None), "resume": (str,), "evaluate": (bool,)},
    "model": {
        "model_version": (int,),
        "codec": (str,),
        "codec_params": (dict,),
        "base_version": (int,),  # present: the payload is a delta from that version
        "digest": (str,),  # sha256 prefix of the float32 model the frame produces
    },
    # A commit, to every volunteer, in one frame: the model itself comes with the next task
    # (or from ``url``); the status fields, optional, are the status as of the commit, with
    # only the history entries from index ``history_from`` on (see ``_STATUS``).
    "model_notice": {"model_version": (int,), "digest": (str,), "url": (str,), **_STATUS},
    "task": {
        "round": (int,),
        "model_version": (int,),
        "deadline_s": _NUM,
        "config": (dict,),
        "codec": (str,),
        # HMAC over (volunteer, round, model_version): the update echoes it (replay protection).
        "token": (str,),
        # DP runs: the L2 norm the volunteer clips its delta to, before the codec
        "clip": _NUM,
        # SecAgg rounds: this volunteer's index and the round's public parameters (core/secagg/wire.py)
        "secagg": (dict,),
    },
    "accept": {"round": (int,)},
    # pace steering: nothing to do now, come back in retry_after_s seconds
    "wait": {"retry_after_s": _NUM, "reason": (str,)},
    "reject": {"reason": (str,), "round": (int, None)},
    # the task's definition changed (its scaling was fixed by the federated statistics)
    "definition": {"task": (dict,)},
    "status": {"model_version": (int,), **_STATUS},
}
OPTIONAL = {
    "hello": {"agent", "model_version", "model_digest", "resume", "task"},
    "model": {"base_version", "digest"},
    "reject": {"round"},
    # [rounds committed, rounds planned] of the current or last run, for "round 3 of 5".
    # ``ended``: why the run ended (see RUN_ENDS), null while it runs.
    "status": {"run", "privacy", "ended", "history_from"},
    "model_notice": set(_STATUS),
    "task": {"clip", "secagg"},
    "update": {"clipped"},
    "wait": {"reason"},
    "welcome": {"shard", "resume", "evaluate"},
}


#: History entries a volunteer keeps (and a full ``status`` carries): its chart's span.
HISTORY_KEPT = 200

#: Why a run ended, as the ``status`` frame's ``ended`` says: all its rounds committed,
#: stopped by the operator, its privacy budget (``max_epsilon``) spent, or failed.
RUN_ENDS = ("completed", "stopped", "max_epsilon", "failed")


class ProtocolError(ValueError):
    """A frame that breaks the protocol; ``code`` is the WebSocket close code to use."""

    def __init__(self, reason: str, code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class Message:
    type: str
    fields: dict = field(default_factory=dict)
    arrays: tuple[np.ndarray, ...] = ()

    def __getitem__(self, name: str):
        return self.fields[name]


def _pad(n: int) -> int:
    return -n % 8


def encode(message: Message) -> bytes:
    """Serialise ``message``; arrays are written little-endian, in order."""
    _check_fields(message.type, message.fields)
    arrays = [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")) for a in message.arrays]
    specs = [[a.dtype.str, list(a.shape)] for a in arrays]
    header = json.dumps(
        {"type": message.type, **message.fields, "arrays": specs}, separators=(",", ":"), allow_nan=False
    ).encode()
    parts = [_PREFIX.pack(MAGIC, len(header)), header, bytes(_pad(8 + len(header)))]
    for a in arrays:
        parts += [a.tobytes(), bytes(_pad(a.nbytes))]
    return b"".join(parts)


def decode(frame: bytes | bytearray | memoryview, max_bytes: int = 64 * 1024 * 1024) -> Message:
    """Parse and validate one frame; raises ``ProtocolError`` with a reason."""
    buf = memoryview(frame).cast("B")
    if len(buf) > max_bytes:
        raise ProtocolError(f"frame of {len(buf)} bytes exceeds the limit of {max_bytes}", CLOSE_TOO_BIG)
    if len(buf) < _PREFIX.size:
        raise ProtocolError("frame too short for a header")
    magic, header_len = _PREFIX.unpack_from(buf)
    if magic[:3] != MAGIC[:3]:
        raise ProtocolError("not a webfl frame (bad magic)")
    if magic[3] != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {magic[3]} is not supported (server speaks {PROTOCOL_VERSION})")
    if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len > len(buf):
        raise ProtocolError("header length out of range")
    try:
        header = json.loads(bytes(buf[_PREFIX.size : _PREFIX.size + header_len]), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    kind = header.pop("type", None)
    specs = header.pop("arrays", [])
    if not isinstance(kind, str) or kind not in SCHEMAS:
        raise ProtocolError(f"unknown message type {kind!r}")
    _check_fields(kind, header)
    offset = _PREFIX.size + header_len
    offset += _pad(offset)
    arrays = []
    for dtype, shape in _check_array_specs(specs):
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if offset + nbytes > len(buf):
            raise ProtocolError("frame is shorter than its arrays")
        arrays.append(np.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape))
        offset += nbytes + _pad(nbytes)
    if offset != len(buf):
        raise ProtocolError("frame length does not match its arrays")
    return Message(kind, header, tuple(arrays))


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _check_array_specs(specs) -> list[tuple[str, tuple[int, ...]]]:
    if not isinstance(specs, list) or len(specs) > MAX_ARRAYS:
        raise ProtocolError(f"'arrays' must be a list of at most {MAX_ARRAYS} [dtype, shape] pairs")
    out = []
    for spec in specs:
        if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[1], list)):
            raise ProtocolError("each array spec must be [dtype, shape]")
        dtype, shape = spec
        if not isinstance(dtype, str) or dtype not in DTYPES:  # a list would not even hash
            raise ProtocolError(f"array dtype {dtype!r} is not allowed")
        if len(shape) > MAX_DIMS or not all(type(d) is int and 0 <= d < 2**31 for d in shape):
            raise ProtocolError(f"bad array shape {shape!r}")
        out.append((dtype, tuple(shape)))
    return out


def _check_fields(kind: str, fields: dict) -> None:
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    unknown = fields.keys() - schema.keys()
    if unknown:
        raise ProtocolError(f"{kind}: unexpected field(s) {', '.join(sorted(unknown))}")
    for name, types in schema.items():
        if name not in fields:
            if name in OPTIONAL.get(kind, ()):
                continue
            raise ProtocolError(f"{kind}: missing field {name!r}")
        value = fields[name]
        if value is None and None in types:
            continue
        # bool is an int subclass in Python but never a valid number here (only where bool is named).
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, tuple(t for t in types if t is not None)):
            raise ProtocolError(f"{kind}: field {name!r} has the wrong type")
        if isinstance(value, float) and not math.isfinite(value):
            raise ProtocolError(f"{kind}: field {name!r} must be finite")
