"""The one error SecAgg's core raises for input it refuses: the caller answers it, never crashes."""

from __future__ import annotations

__all__ = ["SecAggError"]


class SecAggError(ValueError):
    """A SecAgg message or step that cannot go on: malformed, inconsistent or too few parties."""
