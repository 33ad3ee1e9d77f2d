"""X25519 and AES-GCM from ``cryptography`` for the server and Python volunteers.

``NativeVolunteer`` wraps a ``SecAggClient`` with what the browser's worker does with
WebCrypto: make the key pairs, agree with each neighbour, seal and open share frames.
Imported only where ``cryptography`` is installed (the server's environment), never by
the browser's wheel.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from .client import PublicKeys, Reveal, SecAggClient
from .errors import SecAggError

__all__ = ["NativeVolunteer", "X25519Agreement", "open_frame", "seal_frame"]

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


class NativeVolunteer:
    """A volunteer's SecAgg stages with the cryptography done natively: sealed bytes in and out."""

    def __init__(self, client: SecAggClient, agreement: X25519Agreement | None = None) -> None:
        self.client = client
        self.agreement = agreement or X25519Agreement()

    def _agree(self, private: bytes, peer: int, public: bytes) -> bytes:
        try:
            return self.agreement.agree(private, public)
        except ValueError as exc:
            raise SecAggError(f"volunteer {peer}'s public key is unusable: {exc}") from None

    def advertise(self) -> PublicKeys:
        self._channel_private, channel = self.agreement.generate()
        masking_private, masking = self.agreement.generate()
        keys = PublicKeys(channel, masking)
        self.client.advertise(keys, masking_private)
        self._masking_private = masking_private
        return keys

    def share(self, roster: Mapping[int, PublicKeys]) -> dict[int, bytes]:
        secrets = {v: self._agree(self._channel_private, v, k.channel) for v, k in roster.items()}
        self._roster = dict(roster)
        return {v: seal_frame(o.key, o.plaintext, o.aad) for v, o in self.client.share(roster, secrets).items()}

    def mask(self, levels: np.ndarray, inbox: Mapping[int, bytes]) -> bytes:
        opened = {}
        for v, sealed in inbox.items():
            key, aad = self.client.opening(v)
            try:
                opened[v] = open_frame(key, sealed, aad)
            except ValueError as exc:
                raise SecAggError(f"the share from volunteer {v} does not decrypt: {exc}") from None
        secrets = {v: self._agree(self._masking_private, v, self._roster[v].masking) for v in opened}
        return self.client.mask(levels, opened, secrets)

    def unmask(self, survivors: Collection[int]) -> Reveal:
        return self.client.unmask(survivors)
