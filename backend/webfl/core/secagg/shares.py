"""The share one volunteer sends another through the server: its plaintext frame and checks.

Plaintext: ``WSA1`` | round u64 | sender u32 | receiver u32 | share of the self seed (44
bytes) | share of the masking key (44 bytes), all little-endian. The runtime seals it
with AES-256-GCM (WebCrypto in the browser, ``cryptography`` natively) under the channel
key, with the 20-byte header as associated data, so the server cannot re-route a share to
another receiver or round; after decryption the receiver checks the header it expected
is the one sealed. The channel key is HKDF-SHA256 of the two volunteers' X25519 secret.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import SecAggError
from .kdf import hkdf_sha256
from .shamir import SHARE_BYTES

__all__ = ["SharePair", "channel_key", "frame", "header", "read"]

MAGIC = b"WSA1"
HEADER = struct.Struct("<4sQII")
PLAINTEXT_BYTES = HEADER.size + 2 * SHARE_BYTES


@dataclass(frozen=True)
class SharePair:
    """The receiver's shares of the sender's two secrets."""

    self_seed: bytes
    secret_key: bytes


def channel_key(shared_secret: bytes, round_id: int, u: int, v: int) -> bytes:
    """The AES-256-GCM key of the u-v share channel (the same both ways)."""
    lo, hi = sorted((u, v))
    return hkdf_sha256(shared_secret, b"webfl/secagg/share-key" + struct.pack("<QII", round_id, lo, hi))


def header(round_id: int, sender: int, receiver: int) -> bytes:
    """The plaintext's first 20 bytes, also the AEAD's associated data."""
    return HEADER.pack(MAGIC, round_id, sender, receiver)


def frame(round_id: int, sender: int, receiver: int, shares: SharePair) -> bytes:
    if len(shares.self_seed) != SHARE_BYTES or len(shares.secret_key) != SHARE_BYTES:
        raise ValueError(f"a share has {SHARE_BYTES} bytes")
    return header(round_id, sender, receiver) + shares.self_seed + shares.secret_key


def read(plaintext: bytes, round_id: int, sender: int, receiver: int) -> SharePair:
    """The shares in a decrypted frame, refused unless framed for exactly this round, sender and receiver."""
    if len(plaintext) != PLAINTEXT_BYTES or plaintext[: HEADER.size] != header(round_id, sender, receiver):
        raise SecAggError(f"the share from volunteer {sender} is not framed for round {round_id}, {sender} -> {receiver}")
    body = plaintext[HEADER.size :]
    return SharePair(body[:SHARE_BYTES], body[SHARE_BYTES:])
