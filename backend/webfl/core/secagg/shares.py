"""The encrypted share one volunteer sends another through the server, framed and checked.

Plaintext: ``WSA1`` | round u64 | sender u32 | receiver u32 | share of the self seed (44
bytes) | share of the masking key (44 bytes), all little-endian. The header is also the
AEAD's associated data, so the server cannot re-route a share to another receiver or
round; after decryption the receiver checks the header it expected was the one sealed.
The channel key is HKDF-SHA256 of the two volunteers' X25519 secret, bound to the round.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .crypto import ShareCipher
from .errors import SecAggError
from .kdf import hkdf_sha256
from .shamir import SHARE_BYTES

__all__ = ["SharePair", "channel_key", "open_shares", "seal_shares"]

MAGIC = b"WSA1"
HEADER = struct.Struct("<4sQII")
PLAINTEXT_BYTES = HEADER.size + 2 * SHARE_BYTES


@dataclass(frozen=True)
class SharePair:
    """The receiver's shares of the sender's two secrets."""

    self_seed: bytes
    secret_key: bytes


def channel_key(shared_secret: bytes, round_id: int, u: int, v: int) -> bytes:
    lo, hi = sorted((u, v))
    return hkdf_sha256(shared_secret, b"webfl/secagg/share-key" + struct.pack("<QII", round_id, lo, hi))


def seal_shares(cipher: ShareCipher, key: bytes, round_id: int, sender: int, receiver: int, shares: SharePair) -> bytes:
    if len(shares.self_seed) != SHARE_BYTES or len(shares.secret_key) != SHARE_BYTES:
        raise ValueError(f"a share has {SHARE_BYTES} bytes")
    header = HEADER.pack(MAGIC, round_id, sender, receiver)
    return cipher.seal(key, header + shares.self_seed + shares.secret_key, header)


def open_shares(cipher: ShareCipher, key: bytes, sealed: bytes, round_id: int, sender: int, receiver: int) -> SharePair:
    """The shares in ``sealed``, refused unless sealed for exactly this round, sender and receiver."""
    expected = HEADER.pack(MAGIC, round_id, sender, receiver)
    try:
        plaintext = cipher.open(key, sealed, expected)
    except ValueError as exc:
        raise SecAggError(f"the share from volunteer {sender} does not decrypt: {exc}") from None
    if len(plaintext) != PLAINTEXT_BYTES or plaintext[: HEADER.size] != expected:
        raise SecAggError(f"the share from volunteer {sender} is not framed for round {round_id}, {sender} -> {receiver}")
    body = plaintext[HEADER.size :]
    return SharePair(body[:SHARE_BYTES], body[SHARE_BYTES:])
