"""The one error SecAgg's core raises for input it refuses: the caller answers it, never crashes."""

from __future__ import annotations

__all__ = ["OutOfStage", "SecAggError"]


class SecAggError(ValueError):
    """A SecAgg message or step that cannot go on: malformed, inconsistent or too few parties."""


class OutOfStage(SecAggError):
    """A well-meant frame that comes too late or too early: another stage, session or round."""
