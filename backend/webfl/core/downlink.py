"""Downlink compression: how the global model reaches volunteers.

The admin picks a downlink per run (``"downlink"`` in ``POST /api/rounds``)::

    downlink := "none" | "fp16" | "delta:" SPEC      (SPEC: an update codec, see codecs.py)

Design (the invariant is that the model a volunteer holds is, bit for bit, the one
the server believes it holds):

- The server keeps its *exact* global model ``params`` (checkpointed, evaluated) and,
  apart from it, the *held* model ``H``: what every volunteer that followed the
  broadcasts holds, i.e. the result of the same lossy decoding the volunteers do, in
  float32, in the same order. ``ModelChain`` is that copy.
- ``none``: ``H = params``; ``fp16``: ``H = decode(fp16(params))``, a full model frame
  each commit. Both are deterministic, so everyone holding version v holds the same H.
- ``delta:SPEC``: at commit v the server encodes ``params_v - H_{v-1}`` once, broadcasts
  that one frame (``base_version = v-1``) and sets ``H_v = H_{v-1} + decode(frame)``.
  What the lossy code dropped stays in ``params - H`` and is sent in later rounds
  (server-side error feedback), so H never drifts away from params.
- Volunteers train from H and send ``local - H``; the server adds the aggregate of
  those deltas onto its exact ``params``.
- A (re)connecting volunteer says in ``hello`` which version it holds and its digest
  (sha256 of the float32 bytes). If that is one of the last ``keep`` versions of the
  chain, it gets the chain of delta frames since then; otherwise (a fresh tab, a model
  from an older chain, a restarted server) the full ``H`` as float32 (``none``), or the
  fp16 frame itself under ``fp16``. Every model frame carries the digest of the model
  it produces and the volunteer checks it, so a mismatch cannot go unnoticed.
- Who gets what (protocol 1, "model with the task"): a commit sends every volunteer only
  a ``model_notice`` (version, digest, ``model_url``); the frames that bring a volunteer
  from the version it holds to the current one travel with its next task, just before
  the ``task`` frame, and to a (re)connecting volunteer after ``welcome``. The server
  remembers per connection which version it brought the volunteer to, so it sends the
  delta chain when it can. ``model_url(digest)`` serves the held model as raw float32,
  immutable: the bytes hash to their name.
- Frames arrive in order on one WebSocket. A delta frame whose base is not the held
  version but whose target is not newer is stale (a full model raced it) and is
  ignored; a gap is a protocol error (the volunteer reconnects and catches up).

Memory on the server: one extra float32 copy of the model plus at most ``keep``
compressed frames.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .codecs import Codec, Encoded, get_codec
from .protocol import Message, ProtocolError, encode
from .specs import Params, SpecError, parse_spec

__all__ = ["DOWNLINK_GRAMMAR", "ChainStep", "Downlink", "ModelChain", "apply_model", "digest", "get_downlink", "model_url"]

DOWNLINK_GRAMMAR = "none | fp16 | delta:SPEC (SPEC: an update codec such as q8 or topk:0.01+q8)"
WHAT = "downlink"


@dataclass(frozen=True)
class Downlink:
    """A parsed downlink: ``kind`` and, for ``fp16`` and ``delta``, the codec of its frames."""

    kind: Literal["none", "fp16", "delta"]
    codec: Codec | None = None

    @property
    def spec(self) -> str:
        """The canonical spec: ``get_downlink(d.spec) == d`` up to the codec instance."""
        return f"delta:{self.codec.spec}" if self.kind == "delta" else self.kind


def get_downlink(spec: object) -> Downlink:
    """The downlink a spec names; ``SpecError`` (a ``ValueError``) naming the bad part."""
    parsed = parse_spec(spec, what=WHAT, grammar=DOWNLINK_GRAMMAR)
    p = Params(parsed, spec, what=WHAT, grammar=DOWNLINK_GRAMMAR, positional=("codec",) if parsed.name == "delta" else ())
    if parsed.name in ("none", "fp16"):
        p.done()
        return Downlink(parsed.name, None if parsed.name == "none" else get_codec("fp16"))
    if parsed.name != "delta":
        raise p.error(parsed.name, "unknown downlink")
    text = p.text_of("codec")
    p.done()
    if text is None:
        raise p.error("delta", "needs an update codec, e.g. delta:q8")
    try:
        return Downlink("delta", get_codec(text))
    except SpecError as exc:
        raise p.error(exc.part, f"{exc.why} (codec grammar: {exc.grammar})") from None


def digest(params: np.ndarray) -> str:
    """A short fingerprint of a float32 model, bit for bit."""
    return hashlib.sha256(np.ascontiguousarray(params, dtype="<f4").tobytes()).hexdigest()[:32]


def model_url(model_digest: str) -> str:
    """Where the server serves the held model of that digest (raw little-endian float32)."""
    return f"/models/{model_digest}.bin"


def apply_model(held: np.ndarray | None, held_version: int, msg: Message, size: int) -> np.ndarray | None:
    """The model a ``model`` frame produces from the held one; ``None`` if the frame is stale.

    Raises ``ProtocolError`` for a gap in the chain or a digest mismatch.
    """
    values = get_codec(msg["codec"]).decode(Encoded(msg["codec_params"], msg.arrays), size)
    base = msg.fields.get("base_version")
    if base is None:
        params = np.array(values, dtype=np.float32)
    elif held is not None and base == held_version:
        params = np.add(held, values, dtype=np.float32)
    elif held is not None and msg["model_version"] <= held_version:
        return None
    else:
        raise ProtocolError(f"model delta from version {base}, but this volunteer holds {held_version}")
    expected = msg.fields.get("digest")
    if expected is not None and digest(params) != expected:
        raise ProtocolError(f"model {msg['model_version']} does not match the server's digest")
    return params


@dataclass(frozen=True)
class ChainStep:
    """One prepared commit of a ``ModelChain``: the new held model and its frame."""

    held: np.ndarray
    version: int
    frame: bytes | None  # None: the full float32 model, built on demand
    base_version: int | None  # set for a delta frame


class ModelChain:
    """The server's copy of the model volunteers hold, and the frames that reproduce it."""

    def __init__(self, params: np.ndarray, version: int, keep: int = 4) -> None:
        self.keep = keep
        self._reset(np.array(params, dtype=np.float32), version, None)

    def _reset(self, held: np.ndarray, version: int, frame: bytes | None) -> None:
        self.held, self.version = held, version
        self._full = frame  # a frame that reproduces ``held`` exactly, without a base
        self._raw: bytes | None = None
        self._digests: OrderedDict[int, str] = OrderedDict({version: digest(held)})
        self._deltas: dict[int, bytes] = {}  # version -> frame from version - 1

    @property
    def digest(self) -> str:
        return self._digests[self.version]

    def full_frame(self) -> bytes:
        if self._full is None:
            fields = {"model_version": self.version, "codec": "none", "codec_params": {}, "digest": self.digest}
            self._full = encode(Message("model", fields, (self.held,)))
        return self._full

    def raw(self) -> bytes:
        """The held model as little-endian float32 bytes, whose ``digest`` names them."""
        if self._raw is None:
            self._raw = np.ascontiguousarray(self.held, dtype="<f4").tobytes()
        return self._raw

    def prepare(self, params: np.ndarray, version: int, downlink: Downlink, rng: np.random.Generator) -> ChainStep:
        """The frame that moves volunteers to the new exact ``params``; the chain is unchanged
        until ``advance``, so a commit that fails after this leaves it as it was."""
        if downlink.kind == "none":
            held = np.array(params, dtype=np.float32)
            return ChainStep(held, version, None, None)
        codec = downlink.codec
        base = None if downlink.kind == "fp16" else self.version
        x = params if base is None else np.subtract(params, self.held, dtype=np.float32)
        enc = codec.encode(x, rng)
        values = codec.decode(enc, params.size)
        held = values.astype(np.float32) if base is None else np.add(self.held, values, dtype=np.float32)
        fields = {"model_version": version, "codec": codec.spec, "codec_params": enc.params, "digest": digest(held)}
        if base is not None:
            fields["base_version"] = base
        return ChainStep(held, version, encode(Message("model", fields, enc.arrays)), base)

    def advance(self, step: ChainStep) -> bytes:
        """Move to ``step`` (from ``prepare`` on this very chain state); the frame to broadcast."""
        if step.base_version is None:
            self._reset(step.held, step.version, step.frame)
            return self.full_frame()
        if step.base_version != self.version:
            raise ValueError(f"step is a delta from version {step.base_version}, the chain is at {self.version}")
        assert step.frame is not None
        self.held, self.version, self._full, self._raw = step.held, step.version, None, None
        self._digests[step.version] = digest(step.held)
        self._deltas[step.version] = step.frame
        while len(self._digests) > self.keep + 1:
            old, _ = self._digests.popitem(last=False)
            self._deltas.pop(old, None)
            self._deltas.pop(min(self._digests), None)  # no base left for the oldest delta
        return step.frame

    def frames_for(self, version: int | None, model_digest: str | None) -> list[bytes]:
        """What a volunteer holding ``version`` (with that digest) needs to hold the current model."""
        if version is not None and self._digests.get(version) == model_digest:
            chain = [self._deltas.get(v) for v in range(version + 1, self.version + 1)]
            if all(f is not None for f in chain):
                return chain  # empty when already up to date
        return [self.full_frame()]
