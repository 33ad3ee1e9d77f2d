"""A volunteer's SecAgg stages over its runtime's cryptography: sealed bytes in and out.

``VolunteerCrypto`` is what a runtime supplies: X25519 key pairs and agreement, and
AES-256-GCM sealing of share frames. ``native.NativeCrypto`` implements it with
``cryptography`` (the simulator, the tests); the browser's worker implements it with
WebCrypto. ``SecAggVolunteer`` calls it at the four points the stages need it and does
nothing else: every derivation and check is the ``SecAggClient``'s.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol

import numpy as np

from .client import PublicKeys, Reveal, SecAggClient
from .errors import SecAggError

__all__ = ["SecAggVolunteer", "VolunteerCrypto"]


class VolunteerCrypto(Protocol):
    def generate(self) -> tuple[bytes, bytes]:
        """A fresh X25519 (private, public) key pair from the OS, 32 raw bytes each."""

    def agree(self, private: bytes, peer_public: bytes) -> bytes:
        """The raw 32-byte X25519 shared secret; ValueError for a bad peer key."""

    def seal(self, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM: a fresh 12-byte nonce, then ciphertext and 16-byte tag."""

    def open(self, key: bytes, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext of ``seal``; ValueError if it does not authenticate."""


class SecAggVolunteer:
    """One volunteer's round: ``advertise``, ``share``, ``mask``, ``unmask``, in that order."""

    def __init__(self, client: SecAggClient, crypto: VolunteerCrypto) -> None:
        self.client, self.crypto = client, crypto

    def _agree(self, private: bytes, peer: int, public: bytes) -> bytes:
        try:
            return self.crypto.agree(private, public)
        except ValueError as exc:
            raise SecAggError(f"volunteer {peer}'s public key is unusable: {exc}") from None

    def advertise(self) -> PublicKeys:
        self._channel_private, channel = self.crypto.generate()
        masking_private, masking = self.crypto.generate()
        keys = PublicKeys(channel, masking)
        self.client.advertise(keys, masking_private)
        self._masking_private = masking_private
        return keys

    def share(self, roster: Mapping[int, PublicKeys]) -> dict[int, bytes]:
        """Sealed share frames by receiver."""
        secrets = {v: self._agree(self._channel_private, v, k.channel) for v, k in roster.items()}
        outgoing = self.client.share(roster, secrets)
        self._roster = dict(roster)
        return {v: self.crypto.seal(o.key, o.plaintext, o.aad) for v, o in outgoing.items()}

    def open(self, inbox: Mapping[int, bytes]) -> dict[int, bytes]:
        """The plaintexts of the sealed frames the server delivered, by sender."""
        opened = {}
        for v, sealed in inbox.items():
            key, aad = self.client.opening(v)
            try:
                opened[v] = self.crypto.open(key, sealed, aad)
            except ValueError as exc:
                raise SecAggError(f"the share from volunteer {v} does not decrypt: {exc}") from None
        return opened

    def mask(self, levels: np.ndarray, inbox: Mapping[int, bytes]) -> bytes:
        return self.mask_opened(levels, self.open(inbox))

    def mask_opened(self, levels: np.ndarray, opened: Mapping[int, bytes]) -> bytes:
        """The bit-packed masked update, from frames ``open`` read."""
        secrets = {v: self._agree(self._masking_private, v, self._roster[v].masking) for v in opened}
        return self.client.mask(levels, opened, secrets)

    def unmask(self, survivors: Collection[int]) -> Reveal:
        return self.client.unmask(survivors)
