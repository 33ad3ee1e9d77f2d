"""A test hook: die with SIGKILL at a named point, so crash recovery is tested with real kills.

Inert unless ``WEBFL_CRASHPOINT`` is set (read on every call, so it costs one
dictionary lookup). ``WEBFL_CRASHPOINT=NAME`` kills the server the first time it
reaches ``NAME``; ``NAME:ROUND`` only when it reaches ``NAME`` in round ``ROUND``.
Names:

* ``training``: an update of the open round was accepted, or a follower's share of
  them merged (it lives only in memory).
* ``aggregating``: the round is closed and about to be aggregated.
* ``checkpoint``: inside the commit transaction, after the round record and the
  checkpoint are written, before ``COMMIT``.
"""

from __future__ import annotations

import logging
import os
import signal

__all__ = ["POINTS", "crashpoint"]

POINTS = ("training", "aggregating", "checkpoint")

log = logging.getLogger("webfl.crashpoint")


def crashpoint(name: str, round_: int | None = None) -> None:
    spec = os.environ.get("WEBFL_CRASHPOINT")
    if not spec:
        return
    point, _, at = spec.partition(":")
    if point == name and (not at or (round_ is not None and int(at) == round_)):
        log.critical("WEBFL_CRASHPOINT=%s: killing the server at %s (round %s)", spec, name, round_)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
