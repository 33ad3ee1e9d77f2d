"""Update codecs: how a model delta becomes the arrays of an ``update`` frame.

A codec is named by a spec string (``"none"`` is raw float32). ``encode`` runs on
the volunteer; ``decode`` and ``accumulate`` run on the server and validate the
payload first, raising ``CodecError`` with a reason for anything malformed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Codec", "CodecError", "Encoded", "get_codec", "CODECS"]


class CodecError(ValueError):
    """A payload that does not decode to a valid update of the expected size."""


@dataclass(frozen=True)
class Encoded:
    """What a codec puts on the wire: JSON-able parameters and raw arrays."""

    params: dict = field(default_factory=dict)
    arrays: tuple[np.ndarray, ...] = ()

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


class Codec(ABC):
    spec: str

    @abstractmethod
    def encode(self, x: np.ndarray, rng: np.random.Generator) -> Encoded:
        """Compress the float32 vector ``x``."""

    @abstractmethod
    def decode(self, enc: Encoded, size: int) -> np.ndarray:
        """The float32 vector of length ``size`` that ``enc`` stands for."""

    def accumulate(self, acc: np.ndarray, weight: float, enc: Encoded) -> None:
        """``acc += weight * decode(enc)``; codecs override it to skip the dense copy."""
        acc += np.float64(weight) * self.decode(enc, acc.shape[0])


class Float32(Codec):
    """No compression: the delta as little-endian float32."""

    spec = "none"

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> Encoded:
        return Encoded({}, (np.asarray(x, dtype="<f4"),))

    def decode(self, enc: Encoded, size: int) -> np.ndarray:
        (values,) = _expect_arrays(enc, 1)
        if values.dtype != np.dtype("<f4") or values.shape != (size,):
            raise CodecError(f"expected {size} float32 values, got {values.dtype} {values.shape}")
        if not np.isfinite(values).all():
            raise CodecError("update contains NaN or Inf")
        return values

    def accumulate(self, acc: np.ndarray, weight: float, enc: Encoded) -> None:
        values = self.decode(enc, acc.shape[0])
        # Fused multiply-add into the float64 accumulator: no float64 copy of the update.
        np.add(acc, values * np.float32(weight), out=acc, casting="unsafe")


def _expect_arrays(enc: Encoded, n: int) -> tuple[np.ndarray, ...]:
    if enc.params:
        raise CodecError(f"unexpected codec parameters {sorted(enc.params)}")
    if len(enc.arrays) != n:
        raise CodecError(f"expected {n} array(s), got {len(enc.arrays)}")
    return enc.arrays


CODECS: dict[str, type[Codec]] = {"none": Float32}


def get_codec(spec: str) -> Codec:
    """The codec a spec string names; ``ValueError`` for an unknown one."""
    try:
        return CODECS[spec]()
    except KeyError:
        raise ValueError(f"unknown codec {spec!r}; known: {', '.join(CODECS)}") from None
