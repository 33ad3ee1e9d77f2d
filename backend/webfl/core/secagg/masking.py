"""Pairwise and self masks mod 2^b, and the server's streaming sum that removes them.

Volunteer u uploads  y_u = x_u + PRG(b_u) + sum_{v in N(u)} sign(u, v) PRG(s_uv)  mod 2^b,
sign +1 if u < v else -1, so the pair masks of two survivors cancel in the sum. The
server adds the y_u of the survivors S as they arrive (O(model size)), then subtracts
PRG(b_u) for u in S and, for each dropped v with neighbours u in S, sign(u, v) PRG(s_uv).
All arithmetic is uint32, which wraps mod 2^32 and so mod 2^b after the low-bit mask.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np

from .errors import SecAggError
from .kdf import hkdf_sha256
from .prg import expand

__all__ = ["MaskedSum", "mask", "pair_seed", "pair_sign"]

SELF_LABEL = b"self"
PAIR_LABEL = b"pair"


def pair_seed(shared_secret: bytes, round_id: int, u: int, v: int) -> bytes:
    """s_uv = s_vu: the pair-mask seed of u and v from their X25519 shared secret."""
    lo, hi = sorted((u, v))
    return hkdf_sha256(shared_secret, b"webfl/secagg/pair-mask" + struct.pack("<QII", round_id, lo, hi))


def pair_sign(u: int, v: int) -> int:
    return 1 if u < v else -1


def _modulus_mask(bits: int) -> np.uint32:
    return np.uint32((1 << bits) - 1)


def mask(levels: np.ndarray, bits: int, me: int, self_seed: bytes, pair_seeds: Mapping[int, bytes]) -> np.ndarray:
    """u's masked vector mod 2^bits from its quantized levels, self seed and pair seeds by neighbour."""
    levels = np.asarray(levels)
    if levels.dtype != np.uint32 or levels.ndim != 1:
        raise ValueError("quantized levels are a flat uint32 vector")
    out = levels + expand(self_seed, SELF_LABEL, levels.size, bits)
    for v, seed in pair_seeds.items():
        if v == me:
            raise ValueError("a volunteer is not its own neighbour")
        stream = expand(seed, PAIR_LABEL, levels.size, bits)
        out = out + stream if pair_sign(me, v) > 0 else out - stream
    return out & _modulus_mask(bits)


class MaskedSum:
    """The server's running sum mod 2^bits of masked vectors, then the masks' removal."""

    def __init__(self, size: int, bits: int) -> None:
        self.size = size
        self.bits = bits
        self.total = np.zeros(size, np.uint32)
        self.count = 0

    def _check(self, vector: np.ndarray) -> None:
        if vector.dtype != np.uint32 or vector.shape != (self.size,):
            raise SecAggError(f"a masked vector is {self.size} uint32 values")
        if self.bits < 32 and int(vector.max(initial=0)) >> self.bits:
            raise SecAggError(f"a masked value does not fit in {self.bits} bits")

    def add(self, vector: np.ndarray) -> None:
        self._check(vector)
        self.total += vector
        self.total &= _modulus_mask(self.bits)
        self.count += 1

    def remove_self_mask(self, self_seed: bytes) -> None:
        self.total -= expand(self_seed, SELF_LABEL, self.size, self.bits)
        self.total &= _modulus_mask(self.bits)

    def remove_pair_mask(self, survivor: int, dropped: int, seed: bytes) -> None:
        """Take out the mask ``survivor`` added for its dropped neighbour ``dropped``."""
        stream = expand(seed, PAIR_LABEL, self.size, self.bits)
        if pair_sign(survivor, dropped) > 0:
            self.total -= stream
        else:
            self.total += stream
        self.total &= _modulus_mask(self.bits)
