"""What every codec shares: the wire record, its validating reader, deflate, the base class."""

from __future__ import annotations

import math
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = ["Codec", "CodecError", "Encoded", "Layout", "RejectionKind", "WireParams", "check_finite", "show"]

Layout = list[tuple[str, tuple[int, ...]]]
#: Why an update was refused, for the server's counters (never parsed from a message).
RejectionKind = Literal["malformed", "shape", "nonfinite", "norm"]


class CodecError(ValueError):
    """A payload that does not decode to a valid update of the expected size.

    ``kind`` says why, machine-readably: ``"nonfinite"`` (NaN or Inf), ``"shape"`` (an
    array of the wrong dtype or shape) or ``"malformed"`` (anything else).
    """

    def __init__(self, message: str, kind: RejectionKind = "malformed") -> None:
        super().__init__(message)
        self.kind: RejectionKind = kind


@dataclass(frozen=True)
class Encoded:
    """What a codec puts on the wire: JSON-able parameters and raw arrays."""

    params: dict = field(default_factory=dict)
    arrays: tuple[np.ndarray, ...] = ()

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class WireParams:
    """Codec parameters from the wire, each read with its type and range checked."""

    def __init__(self, params: object) -> None:
        if not isinstance(params, dict):
            raise CodecError("codec parameters must be an object")
        self._raw = params
        self._read: set = set()

    def __getitem__(self, key: str):
        return self._raw[key]

    def _get(self, key: str):
        if key not in self._raw:
            raise CodecError(f"missing codec parameter {key!r}")
        self._read.add(key)
        return self._raw[key]

    def int(self, key: str, lo: int, hi: int) -> int:
        value = self._get(key)
        # bool is an int subclass; JSON true is never a valid integer here.
        if type(value) is not int or not lo <= value <= hi:
            raise CodecError(f"codec parameter {key!r} must be an integer in [{lo}, {hi}], got {show(value)}")
        return value

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self._get(key)
        if not (isinstance(value, str) and value in options):
            raise CodecError(f"codec parameter {key!r} must be one of {', '.join(options)}, got {show(value)}")
        return value

    def flag(self, key: str) -> bool:
        if key not in self._raw:
            return False
        if self._get(key) is not True:
            raise CodecError(f"codec parameter {key!r} must be true when present")
        return True

    def done(self) -> None:
        extra = [show(k) for k in self._raw if k not in self._read]
        if extra:
            raise CodecError(f"unexpected codec parameter(s) {', '.join(extra[:5])}")


def _check_arrays(arrays: object, layout: Layout) -> list[np.ndarray]:
    if not isinstance(arrays, (tuple, list)) or len(arrays) != len(layout):
        got = len(arrays) if isinstance(arrays, (tuple, list)) else show(arrays)
        raise CodecError(f"expected {len(layout)} array(s), got {got}", "shape")
    for i, (a, (dtype, shape)) in enumerate(zip(arrays, layout)):
        if not isinstance(a, np.ndarray) or a.dtype != np.dtype(dtype) or a.shape != shape:
            got = f"{a.dtype.str} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise CodecError(f"array {i} must be {dtype} of shape {shape}, got {got}", "shape")
    return list(arrays)


def _deflate(params: dict, arrays: list[np.ndarray]) -> tuple[dict, list[np.ndarray]]:
    """Deflate the arrays' bytes into one array, only if that is smaller."""
    raw = b"".join(a.tobytes() for a in arrays)
    # Run-length matching only: codes of unbiased quantizers have few long matches, so
    # this compresses as well as the default on deltas (runs of exact zeros included)
    # at 3-5x the speed, which matters in a browser.
    deflater = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    packed = deflater.compress(raw) + deflater.flush()
    if len(packed) >= len(raw):
        return params, arrays
    return {**params, "deflate": True}, [np.frombuffer(packed, np.uint8)]


def _inflate(arrays: object, layout: Layout) -> list[np.ndarray]:
    """The arrays of ``layout`` from one deflated array, inflating no more than they need."""
    if not (isinstance(arrays, (tuple, list)) and len(arrays) == 1 and isinstance(arrays[0], np.ndarray)):
        raise CodecError("a deflated payload must be exactly one array")
    blob = arrays[0]
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise CodecError(f"a deflated payload must be a 1-D |u1 array, got {blob.dtype.str} {blob.shape}", "shape")
    expected = sum(math.prod(shape) * np.dtype(dtype).itemsize for dtype, shape in layout)
    inflater = zlib.decompressobj()
    try:
        # The output bound is what stops a zip bomb; one spare byte detects "too long".
        raw = inflater.decompress(np.ascontiguousarray(blob), expected + 1)
    except zlib.error as exc:
        raise CodecError(f"deflated payload is corrupt ({exc})") from None
    if len(raw) != expected or not inflater.eof or inflater.unused_data:
        raise CodecError(f"deflated payload must inflate to exactly {expected} bytes and end there")
    out, offset = [], 0
    for dtype, shape in layout:
        a = np.frombuffer(raw, dtype, math.prod(shape), offset).reshape(shape)
        out.append(a)
        offset += a.nbytes
    return out


def check_finite(values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise CodecError("update contains NaN or Inf", "nonfinite")
    return values


class Codec(ABC):
    """A spec's encoder and validating decoder; instances come from ``get_codec``."""

    spec: str
    stages: tuple[str, ...]
    deflate = True

    # The canonical spec says everything a codec does, so two codecs of one spec are one
    # value (frozen settings that hold codecs compare and hash by it).
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Codec) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> Encoded:
        """Compress the float32 vector ``x``; ``ValueError`` if it is empty or not finite."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"can only encode a non-empty vector, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("cannot encode NaN or Inf")
        params, arrays = self._encode(x, rng)
        if self.deflate:
            params, arrays = _deflate(params, arrays)
        return Encoded(params, tuple(arrays))

    @abstractmethod
    def decode(self, enc: Encoded, size: int) -> np.ndarray:
        """The float32 vector of length ``size`` that ``enc`` stands for."""

    def accumulate(self, acc: np.ndarray, weight: float, enc: Encoded) -> None:
        """``acc += weight * decode(enc)``, without a float64 copy of the update."""
        values = self.decode(enc, acc.shape[0])
        np.add(acc, values * np.float32(weight), out=acc, casting="unsafe")

    def _open(self, enc: Encoded, size: int) -> tuple[WireParams, list[np.ndarray]]:
        """Check every parameter and array shape; inflate if deflated."""
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise CodecError(f"size must be a positive integer, got {show(size)}")
        p = WireParams(enc.params)
        deflated = self.deflate and p.flag("deflate")
        layout = self._layout(p, size)
        p.done()
        return p, _inflate(enc.arrays, layout) if deflated else _check_arrays(enc.arrays, layout)

    @abstractmethod
    def _encode(self, x: np.ndarray, rng: np.random.Generator) -> tuple[dict, list[np.ndarray]]: ...

    @abstractmethod
    def _layout(self, p: WireParams, size: int) -> Layout: ...

    def __repr__(self) -> str:
        return f"get_codec({self.spec!r})"
