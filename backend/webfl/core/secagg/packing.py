"""Bit-packing of integers mod 2^b at b bits each (1 <= b <= 32), vectorised.

Value i takes bits i*b .. i*b+b-1 of the little-endian bit stream: the first value in
the lowest bits of the first byte. The masked vector travels this way, so an upload
costs b bits a parameter instead of 32.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pack_bits", "packed_size", "unpack_bits"]


def packed_size(n: int, bits: int) -> int:
    return -(-n * bits // 8)


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 32:
        raise ValueError(f"packing bits must be in 1..32, not {bits}")


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """``values`` (each < 2^bits) as ``packed_size(len, bits)`` bytes."""
    _check_bits(bits)
    values = np.asarray(values, dtype=np.uint32).reshape(-1)
    if bits < 32 and values.size and int(values.max()) >> bits:
        raise ValueError(f"a value does not fit in {bits} bits")
    # Each value's 32 bits, lowest first; keep the low ``bits`` of each, then repack.
    stream = np.unpackbits(values.astype("<u4").view(np.uint8).reshape(-1, 4), axis=1, bitorder="little")
    return np.packbits(stream[:, :bits].reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, n: int) -> np.ndarray:
    """The ``n`` values (uint32) of ``pack_bits``'s output; refuses a wrong length or stray bits."""
    _check_bits(bits)
    if len(data) != packed_size(n, bits):
        raise ValueError(f"{n} values of {bits} bits take {packed_size(n, bits)} bytes, not {len(data)}")
    stream = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if stream[n * bits :].any():
        raise ValueError("unused bits of the last byte must be zero")
    words = np.zeros((n, 32), np.uint8)
    words[:, :bits] = stream[: n * bits].reshape(n, bits)
    return np.packbits(words, axis=1, bitorder="little").view("<u4").reshape(-1).astype(np.uint32)
