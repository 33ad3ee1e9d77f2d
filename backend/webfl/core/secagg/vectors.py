"""Known-answer vectors for the parts both runtimes must compute byte for byte.

A volunteer's browser and the server must expand the same mask from the same seed,
build the same neighbour graph and read the same shares, or the sum does not unmask.
``check()`` runs every vector and names the ones that differ: the native tests and the
Chromium test (in Pyodide) both call it, so the two runtimes are held to one answer.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .graph import NeighbourGraph
from .kdf import hkdf_sha256
from .packing import pack_bits, unpack_bits
from .prg import expand
from .shamir import combine

__all__ = ["PRG_VECTORS", "check"]

SEED = bytes(range(32))

#: (label, n, bits) -> sha256 of the little-endian uint32 output of ``expand(SEED, ...)``.
PRG_VECTORS = [
    (b"self", 1, 32, "d29626e620e0baecaba9cafbb1aea1ee196ba8eb1d3ea7aafad9e30d7a88c36f"),
    (b"self", 1000, 32, "a1fe4f4d4e00ba41b95b94aa6d8f27748765679287a934cdd6231ec33fe1dd1f"),
    (b"pair", 1000, 13, "5e9fb0d97054a96425b26065a933e5e81570d36f4970f5de3ac6e6d707ae7672"),
    (b"pair", 199210, 20, "271497d3040d295769dfd7322871a16022a1a5bf8d83ba0f24975a29b24afa5f"),
    (b"graph", 7, 1, "1fdafc9d7bfc4149239327b95990b1adbf28e226a4be2616ea16740d5ac32db0"),
]

#: RFC 5869 appendix A.1 (HKDF-SHA256, basic test case).
HKDF_VECTOR = (
    bytes.fromhex("0b" * 22),
    bytes.fromhex("000102030405060708090a0b0c"),
    bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
    "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
)

#: (n, k, volunteer) -> its neighbours in ``NeighbourGraph(n, k, SEED)``.
GRAPH_VECTORS = [((10, 4, 0), (2, 3, 7, 8)), ((11, 3, 5), (4, 7, 8))]

#: sha256 of ``pack_bits(expand(SEED, b"pack", 1000, 13), 13)``.
PACK_VECTOR = "b99bbb33ba64591d53ea9ffe6845da3e44b294b5f39b47871e28769611473680"

#: Shares at points 2, 5, 9 (threshold 2) of the secret bytes(range(100, 132)).
SHAMIR_POINTS = [2, 5, 9]
SHAMIR_SHARES = [
    "c36687605d97d82f6fb5c6749f14e211fb901f0c650b455691bb285b926c6724e970c2227dc49b2f72b45943",
    "d3e8b830ce5dff7678244e63ea0d0e2c4b40a35dd16dfc56bb213123b857491a0d5e28167a2a4376db7d5f28",
    "92ebfa70bbbbdd5584b8024c4e5af34e617ffd74b79b9b02f2a99158ea3b2162e744b05a77b27754bcdf112f",
]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check() -> list[str]:
    """The names of the vectors this runtime gets wrong (empty when all agree)."""
    failed = []
    for label, n, bits, digest in PRG_VECTORS:
        if _sha256(expand(SEED, label, n, bits).astype("<u4").tobytes()) != digest:
            failed.append(f"prg {label.decode()} n={n} b={bits}")
    ikm, salt, info, okm = HKDF_VECTOR
    if hkdf_sha256(ikm, info, 42, salt).hex() != okm:
        failed.append("hkdf rfc5869 a.1")
    for (n, k, u), neighbours in GRAPH_VECTORS:
        if NeighbourGraph(n, k, SEED).neighbours(u) != neighbours:
            failed.append(f"graph n={n} k={k} u={u}")
    values = expand(SEED, b"pack", 1000, 13)
    packed = pack_bits(values, 13)
    if _sha256(packed) != PACK_VECTOR or not np.array_equal(unpack_bits(packed, 13, 1000), values):
        failed.append("pack b=13")
    shares = np.stack([np.frombuffer(bytes.fromhex(s), np.uint8) for s in SHAMIR_SHARES])[:, None, :]
    if combine(SHAMIR_POINTS, shares, 2) != [bytes(range(100, 132))]:
        failed.append("shamir t=2")
    return failed
