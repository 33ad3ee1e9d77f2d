"""The mask generator: SHAKE-256 keyed by a 32-byte seed, expanded to integers mod 2^b.

hashlib's SHAKE-256 is the same C code in CPython and Pyodide, so a seed gives the
same bytes in a volunteer's browser and on the server. 2^b divides 2^32, so the low b
bits of each little-endian 32-bit word are uniform mod 2^b: no rejection step.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["SEED_BYTES", "expand"]

SEED_BYTES = 32
DOMAIN = b"webfl/secagg/prg/v1"


def expand(seed: bytes, label: bytes, n: int, bits: int) -> np.ndarray:
    """``n`` uniform integers mod 2^bits (uint32) from ``seed``, separated by ``label``.

    Two labels give independent streams from one seed (the self mask and a pair mask
    never share bytes); the length-prefixed framing keeps (label, seed) pairs unambiguous.
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed has {SEED_BYTES} bytes, not {len(seed)}")
    if not 1 <= bits <= 32:
        raise ValueError(f"mask bits must be in 1..32, not {bits}")
    if n < 0 or len(label) > 255:
        raise ValueError("n must be >= 0 and the label at most 255 bytes")
    xof = hashlib.shake_256(DOMAIN + bytes([len(label)]) + label + seed)
    words = np.frombuffer(xof.digest(4 * n), dtype="<u4").astype(np.uint32)
    if bits < 32:
        words &= np.uint32((1 << bits) - 1)
    return words
