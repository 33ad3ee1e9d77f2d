"""The leader lease on Redis, and the fencing token that comes with it.

``SET webfl:leader <member> NX PX <lease>`` elects; on success ``INCR webfl:fence``
gives the holder a token larger than any before, and the key's value becomes
``"<member> <token>"`` (one Lua script, so no other member ever sees a holder without
its token). The holder renews every lease/3 with a compare-and-extend: a holder that
paused past its lease finds another value there and steps down. The token goes into
every commit (``Store.fenced_tx``): a store that has seen a larger token refuses the
older holder's writes, so even a leader that does not yet know it lost cannot commit
(Kleppmann, "How to do distributed locking", 2016).
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the ``cluster`` extra; one process runs without it
    from redis.asyncio import Redis

__all__ = ["FENCE_KEY", "LEADER_KEY", "Holder", "Lease"]

LEADER_KEY = "webfl:leader"
FENCE_KEY = "webfl:fence"

_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local value = ARGV[1] .. ' ' .. redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
  return value
end
return false
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Holder:
    """Who holds the lease, and the fencing token it got: one leader's term."""

    member: str
    token: int

    @property
    def value(self) -> str:
        return f"{self.member} {self.token}"

    @classmethod
    def parse(cls, value: bytes | str | None) -> Holder | None:
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else value
        member, _, token = text.rpartition(" ")
        return cls(member, int(token)) if member and token.isdigit() else None


class Lease:
    def __init__(self, redis: Redis, member: str, lease_s: float) -> None:
        if " " in member or not member:
            raise ValueError("a member id is one word")
        self.redis, self.member, self.lease_ms = redis, member, max(1, int(lease_s * 1000))
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self) -> Holder | None:
        """This member's term if the lease was free, else None."""
        value = await self._acquire(keys=[LEADER_KEY, FENCE_KEY], args=[self.member, self.lease_ms])
        return Holder.parse(value) if value else None

    async def renew(self, term: Holder) -> bool:
        """Extend ``term``'s lease; False if it is over (expired, or another member's now)."""
        return bool(await self._renew(keys=[LEADER_KEY], args=[term.value, self.lease_ms]))

    async def release(self, term: Holder) -> None:
        """Give the lease up at once (a clean shutdown), if it is still ``term``'s."""
        await self._release(keys=[LEADER_KEY], args=[term.value])

    async def holder(self) -> Holder | None:
        return Holder.parse(await self.redis.get(LEADER_KEY))
