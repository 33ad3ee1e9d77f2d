"""HMAC-SHA256 signing (one helper for every signed value), and the volunteers' tokens.

``Signer`` also signs the admin page's session cookies (``auth.py``), under a key kept
in the data folder so that sessions survive a restart. Volunteer tokens are
``HMAC-SHA256(key, parts)`` under a key that lives only in this server process (never
stored, never rendered), so a restarted server honours none of its previous life.

- Task tokens: the ``task`` frame carries one over (volunteer id, round, model version)
  and the ``update`` must echo it, so an update (or its token) captured from one
  connection cannot be replayed by another volunteer, into another round, or against
  another model version.
- Resume credentials: ``welcome`` carries one over the volunteer id. Ids are fresh random
  values per connection unless a reconnecting volunteer (a reloaded tab) proves with this
  credential that it was given the id; then an update computed before the reload still
  counts, since the open round lists its sender by id.

Swap in a shared key to run several server processes behind one address.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["ResumeTokens", "Signer", "TaskTokens"]


class Signer:
    """HMAC-SHA256 over a sequence of values, under a key of its own (fresh unless given)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def mac(self, *parts: object) -> bytes:
        # Length-prefixed, so no choice of parts (an attacker's id with a separator in it)
        # can collide with another sequence.
        message = b"".join(b"%d:%s" % (len(p), p) for p in (str(part).encode() for part in parts))
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def sign(self, *parts: object) -> str:
        """A 128-bit hex tag."""
        return self.mac(*parts).hex()[:32]

    def verify(self, token: object, *parts: object) -> bool:
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self.sign(*parts).encode())


class TaskTokens(Signer):
    def issue(self, volunteer: str, round_: int, model_version: int) -> str:
        return self.sign(volunteer, round_, model_version)

    def check(self, volunteer: str, round_: int, model_version: int, token: object) -> bool:
        return self.verify(token, volunteer, round_, model_version)


class ResumeTokens(Signer):
    def issue(self, volunteer: str) -> str:
        return self.sign("resume", volunteer)

    def claimed_id(self, claim: object) -> str | None:
        """The volunteer id a ``hello.resume`` object proves, or None if it proves none."""
        if not isinstance(claim, dict):
            return None
        volunteer, token = claim.get("volunteer"), claim.get("token")
        if not isinstance(volunteer, str) or not 0 < len(volunteer) <= 64:
            return None
        return volunteer if self.verify(token, "resume", volunteer) else None
