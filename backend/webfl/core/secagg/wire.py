"""SecAgg's frames on the wire (``core.protocol`` messages ``sa_*``): built and read here,
once, for the server and both volunteer runtimes.

Every frame names its ``session``, the round's SecAgg id (``RoundSetup.round_id``, below
2^53 so that JavaScript reads it exactly). Ids are cohort indices (uint32 arrays), keys
and shares raw bytes (uint8 arrays, one row each). A reader refuses anything but the exact
arrays it expects, with a ``SecAggError`` that says what is wrong.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

from ..protocol import Message
from .client import PublicKeys, Reveal
from .crypto import KEY_BYTES
from .errors import SecAggError
from .graph import NeighbourGraph
from .quantize import Quantizer
from .setup import RoundSetup
from .shamir import SHARE_BYTES
from .shares import PLAINTEXT_BYTES

__all__ = [
    "MAX_COHORT", "MAX_SESSION", "SEALED_BYTES", "TYPES", "id_rows", "keys_message", "read_id_rows", "read_keys", "read_reveal",
    "read_roster", "read_setup", "read_survivors", "reveal_message", "roster_message", "setup_fields", "unmask_message",
]

#: A sealed share frame: 12-byte nonce, the 108-byte plaintext, a 16-byte tag (AES-256-GCM).
SEALED_BYTES = 12 + PLAINTEXT_BYTES + 16
#: Session ids are below 2^53: exact as JSON numbers in every runtime.
MAX_SESSION = 2**53
#: The SecAgg message types, volunteer -> server and server -> volunteer.
TYPES = frozenset({"sa_keys", "sa_shares", "sa_masked", "sa_reveal", "sa_roster", "sa_inbox", "sa_unmask"})


def _ids(ids: Collection[int]) -> np.ndarray:
    return np.asarray(sorted(ids), dtype="<u4").reshape(-1)


def _rows(msg: Message, index: int, width: int, count: int, what: str) -> np.ndarray:
    a = msg.arrays[index]
    if a.dtype != np.uint8 or a.shape != (count, width):
        raise SecAggError(f"{msg.type}: {what} must be {count} rows of {width} bytes (uint8), got {a.dtype} {a.shape}")
    return a


def _read_ids(msg: Message, index: int, n: int) -> list[int]:
    a = msg.arrays[index]
    if a.dtype != np.dtype("<u4") or a.ndim != 1:
        raise SecAggError(f"{msg.type}: ids must be a uint32 vector")
    ids = [int(x) for x in a]
    if any(x >= n for x in ids) or len(set(ids)) != len(ids) or ids != sorted(ids):
        raise SecAggError(f"{msg.type}: ids must be distinct, ascending and below the cohort size {n}")
    return ids


def _arity(msg: Message, count: int) -> None:
    if len(msg.arrays) != count:
        raise SecAggError(f"{msg.type} carries {count} arrays, not {len(msg.arrays)}")


def keys_message(session: int, keys: PublicKeys) -> Message:
    """ADVERTISE: the channel and masking public keys, 64 bytes."""
    return Message("sa_keys", {"session": session}, (np.frombuffer(keys.channel + keys.masking, np.uint8),))


def read_keys(msg: Message) -> PublicKeys:
    _arity(msg, 1)
    a = msg.arrays[0]
    if a.dtype != np.uint8 or a.shape != (2 * KEY_BYTES,):
        raise SecAggError(f"sa_keys: the keys are {2 * KEY_BYTES} bytes (uint8)")
    raw = a.tobytes()
    return PublicKeys(raw[:KEY_BYTES], raw[KEY_BYTES:])


def roster_message(session: int, roster: Mapping[int, PublicKeys]) -> Message:
    ids = _ids(roster)
    keys = np.frombuffer(b"".join(roster[v].channel + roster[v].masking for v in ids), np.uint8).reshape(len(ids), 2 * KEY_BYTES)
    return Message("sa_roster", {"session": session}, (ids, keys))


def read_roster(msg: Message, n: int) -> dict[int, PublicKeys]:
    _arity(msg, 2)
    ids = _read_ids(msg, 0, n)
    rows = _rows(msg, 1, 2 * KEY_BYTES, len(ids), "keys")
    return {v: PublicKeys(row[:KEY_BYTES].tobytes(), row[KEY_BYTES:].tobytes()) for v, row in zip(ids, rows)}


def id_rows(kind: str, session: int, rows: Mapping[int, bytes]) -> Message:
    """``sa_shares`` (sealed frames by receiver) and ``sa_inbox`` (by sender): ids and 136-byte rows."""
    ids = _ids(rows)
    data = np.frombuffer(b"".join(rows[v] for v in ids), np.uint8).reshape(len(ids), SEALED_BYTES)
    return Message(kind, {"session": session}, (ids, data))


def read_id_rows(msg: Message, n: int) -> dict[int, bytes]:
    _arity(msg, 2)
    ids = _read_ids(msg, 0, n)
    rows = _rows(msg, 1, SEALED_BYTES, len(ids), "sealed shares")
    return {v: row.tobytes() for v, row in zip(ids, rows)}


def unmask_message(session: int, survivors: Collection[int]) -> Message:
    return Message("sa_unmask", {"session": session}, (_ids(survivors),))


def read_survivors(msg: Message, n: int) -> frozenset[int]:
    _arity(msg, 1)
    return frozenset(_read_ids(msg, 0, n))


def reveal_message(session: int, reveal: Reveal) -> Message:
    """UNMASK: shares of surviving neighbours' self seeds, then of dropped ones' masking keys."""
    arrays = []
    for part in (reveal.self_seeds, reveal.secret_keys):
        ids = _ids(part)
        arrays += [ids, np.frombuffer(b"".join(part[v] for v in ids), np.uint8).reshape(len(ids), SHARE_BYTES)]
    return Message("sa_reveal", {"session": session}, tuple(arrays))


def read_reveal(msg: Message, n: int) -> Reveal:
    _arity(msg, 4)
    parts = []
    for i in (0, 2):
        ids = _read_ids(msg, i, n)
        rows = _rows(msg, i + 1, SHARE_BYTES, len(ids), "shares")
        parts.append({v: row.tobytes() for v, row in zip(ids, rows)})
    if parts[0].keys() & parts[1].keys():
        raise SecAggError("sa_reveal: both shares of one neighbour (its self seed and its masking key)")
    return Reveal(parts[0], parts[1])


#: The ``task`` frame's ``secagg`` field: this volunteer's index and the round's public parameters.
_SETUP_KEYS = frozenset({"session", "index", "cohort", "neighbors", "threshold", "bits", "q", "clip", "range", "graph_seed"})
#: The largest SecAgg cohort: every party builds the n x n neighbour graph (1 MB at 1,000).
MAX_COHORT = 1_000


def setup_fields(setup: RoundSetup, quantizer: Quantizer, index: int) -> dict:
    return {
        "session": setup.round_id, "index": index, "cohort": setup.graph.n, "neighbors": setup.graph.k, "threshold": setup.threshold,
        "bits": setup.bits, "q": quantizer.q, "clip": quantizer.clip, "range": quantizer.range, "graph_seed": setup.graph.seed.hex(),
    }


def read_setup(fields: object, size: int) -> tuple[RoundSetup, Quantizer, int]:
    """A task's ``secagg`` field for a model of ``size`` values; ``SecAggError`` if it is not one."""
    if not isinstance(fields, dict) or fields.keys() != _SETUP_KEYS:
        raise SecAggError(f"task.secagg must have exactly the keys {', '.join(sorted(_SETUP_KEYS))}")
    ints = {k: fields[k] for k in ("session", "index", "cohort", "neighbors", "threshold", "bits", "q")}
    if any(type(v) is not int for v in ints.values()) or not 0 <= ints["session"] < MAX_SESSION:
        raise SecAggError("task.secagg: session, index, cohort, neighbors, threshold, bits and q are integers")
    n = ints["cohort"]
    if not 2 <= n <= MAX_COHORT or not 0 <= ints["index"] < n:
        raise SecAggError(f"task.secagg: a cohort of 2..{MAX_COHORT} and an index in it")
    try:
        seed = bytes.fromhex(fields["graph_seed"]) if isinstance(fields["graph_seed"], str) else b""
        if len(seed) != 32:
            raise ValueError("graph_seed is 32 bytes in hex")
        quantizer = Quantizer(float(fields["clip"]), ints["q"], ints["bits"], float(fields["range"]))
        graph = NeighbourGraph(n, ints["neighbors"], seed)
        if quantizer.capacity < n:
            raise ValueError(f"{ints['bits']} modulus bits cannot hold the sum of {n} updates")
        setup = RoundSetup(ints["session"], size, ints["bits"], ints["threshold"], graph)
    except (TypeError, ValueError) as exc:
        raise SecAggError(f"task.secagg: {exc}") from None
    return setup, quantizer, ints["index"]
