"""``KeyAgreement`` and ``ShareCipher`` on ``cryptography`` for Python volunteers and the server.

Imported only where ``cryptography`` is installed (the server's environment); the
browser's worker provides the same two interfaces over WebCrypto instead.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

__all__ = ["AesGcmCipher", "X25519Agreement"]

NONCE_BYTES = 12


class X25519Agreement:
    def generate(self) -> tuple[bytes, bytes]:
        key = X25519PrivateKey.generate()
        private = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return private, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def public(self, private: bytes) -> bytes:
        key = X25519PrivateKey.from_private_bytes(private)
        return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def agree(self, private: bytes, peer_public: bytes) -> bytes:
        # cryptography refuses a low-order peer key (an all-zero secret) with ValueError.
        return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))


class AesGcmCipher:
    def seal(self, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)

    def open(self, key: bytes, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < NONCE_BYTES + 16:
            raise ValueError("a sealed share is shorter than its nonce and tag")
        try:
            return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
        except InvalidTag:
            raise ValueError("a sealed share failed authentication") from None
