"""Index coding for sparse updates: LEB128 varint gaps or a bitmap, validated on decode."""

from __future__ import annotations

import numpy as np

from .base import CodecError

__all__ = ["bitmap_indices", "varint_encode", "varint_indices"]


def varint_encode(idx: np.ndarray) -> np.ndarray:
    """LEB128 varints of the gaps between sorted indices, less one.

    Less one, so that any varint stream decodes to strictly increasing indices:
    repeated or unsorted indices cannot even be expressed.
    """
    gaps = np.diff(idx, prepend=-1) - 1
    lengths = np.searchsorted(np.array([2**7, 2**14, 2**21, 2**28]), gaps, side="right") + 1
    starts = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()), np.uint8)
    for j in range(int(lengths.max())):  # one vectorised pass per byte position
        has = lengths > j
        more = np.where(lengths[has] > j + 1, 0x80, 0)
        out[starts[has] + j] = (gaps[has] >> (7 * j)) & 0x7F | more
    return out


def varint_indices(buf: np.ndarray, k: int, size: int) -> np.ndarray:
    """The ``k`` strictly increasing indices below ``size`` that ``buf`` codes."""
    ends = np.flatnonzero(buf < 0x80)
    if ends.size != k or ends[-1] != buf.size - 1:
        raise CodecError(f"index bytes must hold exactly {k} complete varints")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 5:
        raise CodecError("an index varint is longer than 5 bytes")
    if (buf[ends[lengths > 1]] == 0).any():
        raise CodecError("an index varint is not minimally encoded")
    gaps = np.zeros(k, np.int64)
    for j in range(int(lengths.max())):
        has = lengths > j
        gaps[has] |= (buf[starts[has] + j] & 0x7F).astype(np.int64) << (7 * j)
    # Bounding each gap first also keeps the running sum far from int64 overflow.
    idx = np.cumsum(gaps + 1) - 1 if gaps.max() < size else None
    if idx is None or idx[-1] >= size:
        raise CodecError(f"an index is out of range for a vector of {size}")
    return idx


def bitmap_indices(buf: np.ndarray, k: int, size: int) -> np.ndarray:
    """The indices of the ``k`` bits set in a little-endian bitmap of ``size`` bits."""
    idx = np.flatnonzero(np.unpackbits(buf, bitorder="little"))
    if idx.size != k:
        raise CodecError(f"index bitmap has {idx.size} bits set, expected {k}")
    if idx[-1] >= size:
        raise CodecError(f"index bitmap sets a bit past the end of a vector of {size}")
    return idx
