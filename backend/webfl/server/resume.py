"""Resume credentials: a volunteer that reconnects (a reloaded tab) may keep its id.

``welcome`` carries ``resume = HMAC-SHA256(key, "resume|" + volunteer id)`` under a key
that lives only in this server process, so only the connection that was given an id
can claim it again, and a restarted server (whose rounds are gone anyway) honours none.
Keeping the id is what lets an update computed before a reload still count: the open
round lists its sender by id. Swap the class for a shared-key one to run several
server processes behind one address.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["ResumeTokens"]


class ResumeTokens:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def issue(self, volunteer: str) -> str:
        return hmac.new(self._key, f"resume|{volunteer}".encode(), hashlib.sha256).hexdigest()[:32]

    def claimed_id(self, claim: object) -> str | None:
        """The volunteer id a ``hello.resume`` object proves, or None if it proves none."""
        if not isinstance(claim, dict):
            return None
        volunteer, token = claim.get("volunteer"), claim.get("token")
        if not isinstance(volunteer, str) or not isinstance(token, str) or not 0 < len(volunteer) <= 64:
            return None
        return volunteer if hmac.compare_digest(token.encode(), self.issue(volunteer).encode()) else None
