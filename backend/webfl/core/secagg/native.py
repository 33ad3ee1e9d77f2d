"""X25519 and AES-GCM from ``cryptography`` for the server and Python volunteers.

``NativeCrypto`` is ``runtime.VolunteerCrypto`` natively: what the browser's worker does
with WebCrypto (make the key pairs, agree with each neighbour, seal and open share
frames); ``NativeVolunteer`` is a ``SecAggVolunteer`` on it.
Imported only where ``cryptography`` is installed (the server's environment), never by
the browser's wheel.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from .client import PublicKeys, SecAggClient
from .runtime import SecAggVolunteer, run

__all__ = ["NativeCrypto", "NativeVolunteer", "X25519Agreement", "open_frame", "seal_frame"]

NONCE_BYTES = 12
TAG_BYTES = 16


class X25519Agreement:
    """``crypto.KeyAgreement`` on ``cryptography``, plus key generation."""

    def generate(self) -> tuple[bytes, bytes]:
        """A fresh (private, public) key pair from the OS, 32 raw bytes each."""
        key = X25519PrivateKey.generate()
        private = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return private, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def public(self, private: bytes) -> bytes:
        key = X25519PrivateKey.from_private_bytes(private)
        return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def agree(self, private: bytes, peer_public: bytes) -> bytes:
        # cryptography refuses a low-order peer key (an all-zero secret) with ValueError.
        return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))


def seal_frame(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM: a fresh 12-byte nonce from the OS, then ciphertext and tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_frame(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise ValueError("shorter than its nonce and tag")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag:
        raise ValueError("authentication failed") from None


class NativeCrypto(X25519Agreement):
    """``runtime.VolunteerCrypto`` on ``cryptography``: the Python volunteer's runtime."""

    def seal(self, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return seal_frame(key, plaintext, aad)

    def open(self, key: bytes, sealed: bytes, aad: bytes) -> bytes:
        return open_frame(key, sealed, aad)


class NativeVolunteer(SecAggVolunteer):
    """A volunteer's SecAgg stages with the cryptography done natively, each stage one call."""

    def __init__(self, client: SecAggClient) -> None:
        super().__init__(client)
        self.crypto = NativeCrypto()

    def advertise(self) -> PublicKeys:
        return run(super().advertise(), self.crypto)

    def share(self, roster: Mapping[int, PublicKeys]) -> dict[int, bytes]:
        return run(super().share(roster), self.crypto)

    def mask(self, levels: np.ndarray, inbox: Mapping[int, bytes]) -> bytes:
        run(self.accept(inbox), self.crypto)
        return self.masked(levels)
