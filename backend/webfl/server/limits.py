"""Token buckets: rate limits per connection and per address, connection caps, login throttling."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["AddressLimits", "ConnectionLimits", "FrameRates", "RateLimited", "TokenBucket"]


@dataclass
class TokenBucket:
    """``rate`` units per second, bursts of up to ``burst``."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, amount: float = 1.0, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True


class RateLimited(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FrameRates:
    frames_per_s: float
    frame_burst: float
    bytes_per_s: float
    byte_burst: float


class ConnectionLimits:
    """Frame and byte buckets for one connection and its address (shared with its siblings)."""

    def __init__(self, own: tuple[TokenBucket, TokenBucket], shared: tuple[TokenBucket, TokenBucket]) -> None:
        self.own, self.shared = own, shared

    def charge(self, nbytes: int) -> None:
        now = time.monotonic()
        for (frames, bytes_), who in ((self.own, "connection"), (self.shared, "address")):
            if not frames.take(1, now):
                raise RateLimited(f"rate limit: too many frames per second from this {who}")
            if not bytes_.take(nbytes, now):
                raise RateLimited(f"rate limit: too many bytes per second from this {who}")


class AddressLimits:
    """Per-address state: open connections (capped), shared rate buckets, failed logins."""

    def __init__(self, max_connections: int, per_connection: FrameRates, per_address: FrameRates,
                 logins_per_minute: float = 5.0) -> None:
        self.max_connections = max_connections
        self.per_connection, self.per_address = per_connection, per_address
        self.logins_per_minute = logins_per_minute
        self._open: dict[str, int] = {}
        self._shared: dict[str, tuple[TokenBucket, TokenBucket]] = {}
        self._logins: dict[str, TokenBucket] = {}

    @staticmethod
    def _buckets(r: FrameRates) -> tuple[TokenBucket, TokenBucket]:
        return TokenBucket(r.frames_per_s, r.frame_burst), TokenBucket(r.bytes_per_s, r.byte_burst)

    def open(self, address: str) -> ConnectionLimits | None:
        """Limits for a new connection, or ``None`` if the address is at its cap."""
        if self._open.get(address, 0) >= self.max_connections:
            return None
        self._open[address] = self._open.get(address, 0) + 1
        shared = self._shared.setdefault(address, self._buckets(self.per_address))
        return ConnectionLimits(self._buckets(self.per_connection), shared)

    def close(self, address: str) -> None:
        left = self._open.get(address, 0) - 1
        if left > 0:
            self._open[address] = left
        else:
            # The last connection of an address takes its state along: memory stays bounded
            # by the open connections.
            self._open.pop(address, None)
            self._shared.pop(address, None)

    def login_allowed(self, address: str) -> bool:
        """One sign-in attempt of ``address``; False once it is over the limit."""
        if len(self._logins) > 10_000:  # bounded: forget the oldest addresses
            for key in list(self._logins)[:5_000]:
                del self._logins[key]
        bucket = self._logins.setdefault(address, TokenBucket(self.logins_per_minute / 60.0, self.logins_per_minute))
        return bucket.take()
