"""X25519 as the server's unmasking needs it: rebuild a dropped volunteer's pair secrets.

The volunteer's side never calls a primitive: its runtime (WebCrypto in the worker,
``cryptography`` in ``native.py``) makes the keys, agrees, seals and opens, and hands the
core raw shared secrets and plaintexts, so every derivation and check is the core's and
WebCrypto's asynchronous calls stay in JavaScript. Keys are raw 32-byte strings.
"""

from __future__ import annotations

from typing import Protocol

from .errors import SecAggError

__all__ = ["KEY_BYTES", "KeyAgreement", "check_secret"]

KEY_BYTES = 32


class KeyAgreement(Protocol):
    def public(self, private: bytes) -> bytes:
        """The public key of ``private`` (the server checks a rebuilt key with it)."""

    def agree(self, private: bytes, peer_public: bytes) -> bytes:
        """The raw 32-byte X25519 shared secret; raises ValueError for a bad peer key."""


def check_secret(secret: bytes, who: str) -> bytes:
    """Refuse a shared secret that is not 32 bytes or is all zeros (a low-order peer key)."""
    if len(secret) != KEY_BYTES or not any(secret):
        raise SecAggError(f"{who}'s key agreement gave no usable secret (a bad or low-order public key)")
    return secret
