"""User-level differential privacy for FedAvg (McMahan et al. 2018), pure NumPy.

The volunteer clips its model delta (``l2_clip``) before any codec; the server folds
decoded updates into a ``DPSum``, which re-clips, sums, adds Gaussian noise from the OS's
CSPRNG (``SecureGaussian``) and divides by the expected cohort size. ``AdaptiveClip``
moves the clip norm towards a quantile of the update norms (Andrew et al. 2021) with a
noised count. The accountant lives on the server (``webfl.server.privacy``): it needs
``dp-accounting``, which Pyodide does not have.
"""

from .adaptive import AdaptiveClip, Mechanism, split_noise
from .clip import l2_clip
from .noise import SecureGaussian
from .release import DEFAULT_TOLERANCE, ClipVerdict, DPSum, Release, ReleaseState

__all__ = [
    "DEFAULT_TOLERANCE",
    "AdaptiveClip",
    "ClipVerdict",
    "DPSum",
    "Mechanism",
    "Release",
    "ReleaseState",
    "SecureGaussian",
    "l2_clip",
    "split_noise",
]
