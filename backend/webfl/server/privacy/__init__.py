"""Differential privacy on the server: the run's ``"dp"`` settings, what they are
compatible with, and the privacy accountant (Google's ``dp-accounting``, server-only:
Pyodide has no build of it). The mechanism itself is in ``webfl.core.privacy``.
"""

from .accountant import Accountant
from .compat import check_compatible
from .settings import AccountantKind, DPSettings, Sampling

__all__ = ["Accountant", "AccountantKind", "DPSettings", "Sampling", "check_compatible"]
