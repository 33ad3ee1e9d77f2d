"""HMAC-SHA256 signing (one helper for every signed value), and the volunteers' tokens.

Every key comes from the store (``Store.secret``: drawn once from the OS, then shared by
every member on the database and kept across restarts, never rendered), so a volunteer's
token or credential, or an admin's session cookie, is honoured by whichever member it
reaches. ``Signer`` also signs the admin page's session cookies (``auth.py``). Volunteer
tokens are ``HMAC-SHA256(key, parts)``:

- Task tokens: the ``task`` frame carries one over (volunteer id, round, model version)
  and the ``update`` must echo it, so an update (or its token) captured from one
  connection cannot be replayed by another volunteer, into another round, or against
  another model version.
- Resume credentials: ``welcome`` carries one over the volunteer id. Ids are fresh random
  values per connection unless a reconnecting volunteer (a reloaded tab) proves with this
  credential that it was given the id; then an update computed before the reload still
  counts, since the open round lists its sender by id.

A token names a round and a model version, and counts only while its task is outstanding
(``rounds/tasks.py``), so a key that outlives a restart revives no old task.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["KEY_BYTES", "ResumeTokens", "Signer", "TaskTokens"]

#: The length of every key (``Store.secret`` draws this many bytes).
KEY_BYTES = 32


class Signer:
    """HMAC-SHA256 over a sequence of values, under a shared key (``Store.secret``)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"a signing key has at least {KEY_BYTES} bytes")
        self._key = key

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
