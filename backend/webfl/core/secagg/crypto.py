"""The two primitives SecAgg borrows from its runtime: X25519 agreement and AES-GCM.

The core needs only their results (raw shared-secret bytes, sealed bytes), so natively
they come from ``cryptography`` (``native.py``) and in the browser from WebCrypto, while
every derivation and check around them stays the core's. Keys are raw 32-byte strings:
a masking key's private half is Shamir-shared, and the server rebuilds it as bytes.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["KeyAgreement", "ShareCipher"]

KEY_BYTES = 32


class KeyAgreement(Protocol):
    def generate(self) -> tuple[bytes, bytes]:
        """A fresh (private, public) X25519 key pair, 32 raw bytes each, from the OS."""

    def public(self, private: bytes) -> bytes:
        """The public key of ``private`` (the server checks a rebuilt key with it)."""

    def agree(self, private: bytes, peer_public: bytes) -> bytes:
        """The raw 32-byte X25519 shared secret; raises ValueError for a bad peer key."""


class ShareCipher(Protocol):
    def seal(self, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM of ``plaintext`` under ``key``: a fresh 12-byte nonce, ciphertext, tag."""

    def open(self, key: bytes, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext of ``seal``'s output; raises ValueError if it was not sealed so."""
