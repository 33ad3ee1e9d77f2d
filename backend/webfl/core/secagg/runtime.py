"""A volunteer's SecAgg stages over its runtime's cryptography, as generators of requests.

Each stage that needs X25519 or AES-GCM is a generator: it yields a ``CryptoRequest`` (a
batch of one kind of operation) and is sent back the answers, so the same code serves a
synchronous runtime and an asynchronous one. ``run`` answers the requests at once from a
``VolunteerCrypto`` (``native.NativeCrypto`` on ``cryptography``: the simulator, the
tests); the browser's worker answers them with WebCrypto between two calls into Pyodide
(``core.browser.BrowserSession.crypto_request``, ``web/static/worker/secagg.js``). Every
derivation and check is the ``SecAggClient``'s; the runtime only generates, agrees,
seals and opens.
"""

from __future__ import annotations

from collections.abc import Collection, Generator, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from .client import PublicKeys, Reveal, SecAggClient
from .crypto import KEY_BYTES
from .errors import SecAggError

__all__ = ["OPS", "CryptoRequest", "SecAggVolunteer", "Steps", "VolunteerCrypto", "answer", "run"]

T = TypeVar("T")

#: The operations, and the inputs of each item: ``generate`` none (the answer is one key
#: pair, private || public, 64 bytes), ``agree`` (private, peer public), ``seal`` (key,
#: aad, plaintext), ``open`` (key, aad, sealed). A failed agree or open answers b"".
OPS = {"generate": 0, "agree": 2, "seal": 3, "open": 3}


@dataclass(frozen=True)
class CryptoRequest:
    op: str
    items: tuple[tuple[bytes, ...], ...]


Steps = Generator[CryptoRequest, list, T]


class VolunteerCrypto(Protocol):
    def generate(self) -> tuple[bytes, bytes]:
        """A fresh X25519 (private, public) key pair from the OS, 32 raw bytes each."""

    def agree(self, private: bytes, peer_public: bytes) -> bytes:
        """The raw 32-byte X25519 shared secret; ValueError for a bad peer key."""

    def seal(self, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM: a fresh 12-byte nonce, then ciphertext and 16-byte tag."""

    def open(self, key: bytes, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext of ``seal``; ValueError if it does not authenticate."""


def answer(crypto: VolunteerCrypto, request: CryptoRequest) -> list[bytes]:
    """The answers to ``request`` from a synchronous runtime."""
    out = []
    for item in request.items:
        try:
            if request.op == "generate":
                private, public = crypto.generate()
                out.append(private + public)
            elif request.op == "agree":
                out.append(crypto.agree(*item))
            elif request.op == "seal":
                key, aad, plaintext = item
                out.append(crypto.seal(key, plaintext, aad))
            else:
                key, aad, sealed = item
                out.append(crypto.open(key, sealed, aad))
        except ValueError:
            out.append(b"")
    return out


def run(steps: Steps[T], crypto: VolunteerCrypto) -> T:
    """Drive a stage to its end, answering each request from ``crypto``."""
    try:
        request = next(steps)
        while True:
            request = steps.send(answer(crypto, request))
    except StopIteration as done:
        return done.value


def _ask(op: str, items: list[tuple[bytes, ...]]) -> Steps[list[bytes]]:
    """Yield one request and check its answers: one bytes value per item (64 for a key pair)."""
    got = yield CryptoRequest(op, tuple(items))
    if not isinstance(got, list) or len(got) != len(items) or not all(isinstance(b, bytes) for b in got):
        raise SecAggError(f"the runtime answered {op} with something other than {len(items)} byte strings")
    if op == "generate" and any(len(b) != 2 * KEY_BYTES for b in got):
        raise SecAggError(f"a generated key pair is {2 * KEY_BYTES} bytes")
    return got


class SecAggVolunteer:
    """One volunteer's round: ``advertise``, ``share``, ``accept`` (its inbox), ``masked``, ``unmask``."""

    def __init__(self, client: SecAggClient) -> None:
        self.client = client

    def advertise(self) -> Steps[PublicKeys]:
        channel, masking = yield from _ask("generate", [(), ()])
        self._channel_private = channel[:KEY_BYTES]
        keys = PublicKeys(channel[KEY_BYTES:], masking[KEY_BYTES:])
        self.client.advertise(keys, masking[:KEY_BYTES])
        self._masking_private = masking[:KEY_BYTES]
        return keys

    def share(self, roster: Mapping[int, PublicKeys]) -> Steps[dict[int, bytes]]:
        """Sealed share frames by receiver, for the neighbours in ``roster``."""
        order = sorted(roster)
        agreed = yield from _ask("agree", [(self._channel_private, roster[v].channel) for v in order])
        outgoing = self.client.share(roster, dict(zip(order, agreed)))  # refuses a failed (empty) secret
        self._roster = dict(roster)
        receivers = sorted(outgoing)
        sealed = yield from _ask("seal", [(outgoing[v].key, outgoing[v].aad, outgoing[v].plaintext) for v in receivers])
        return dict(zip(receivers, sealed))

    def accept(self, inbox: Mapping[int, bytes]) -> Steps[None]:
        """Open the sealed frames the server delivered and agree a pair-mask secret with each sender."""
        senders = sorted(inbox)
        if not set(senders) <= set(self._roster):
            raise SecAggError("shares arrived from volunteers outside the roster")
        openings = [self.client.opening(v) for v in senders]
        opened = yield from _ask("open", [(key, aad, inbox[v]) for v, (key, aad) in zip(senders, openings)])
        for v, plaintext in zip(senders, opened):
            if not plaintext:
                raise SecAggError(f"the share from volunteer {v} does not decrypt")
        agreed = yield from _ask("agree", [(self._masking_private, self._roster[v].masking) for v in senders])
        self._opened, self._masking_secrets = dict(zip(senders, opened)), dict(zip(senders, agreed))

    def masked(self, levels: np.ndarray) -> bytes:
        """The bit-packed masked update (after ``accept``)."""
        return self.client.mask(levels, self._opened, self._masking_secrets)

    def unmask(self, survivors: Collection[int]) -> Reveal:
        return self.client.unmask(survivors)
