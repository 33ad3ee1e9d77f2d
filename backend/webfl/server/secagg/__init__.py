"""Secure aggregation on the server: the ``"secagg"`` run setting (``settings``) and one
round's stage machine over the core's ``Unmasker`` (``session``). The run mode that drives
it over the wire is ``server/rounds/secagg.py``; the arithmetic is ``webfl.core.secagg``."""

from .settings import SecAggSettings, default_neighbors
from .session import SecAggSession, Stage

__all__ = ["SecAggSession", "SecAggSettings", "Stage", "default_neighbors"]
