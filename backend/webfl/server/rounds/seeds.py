"""Every random stream of a run, derived from the server's seed and what it is for.

Derived, not drawn, so a replayed round selects, seeds tasks and codes the downlink the
same way. None of these is a secret: tokens and credentials use the OS's randomness.
"""

from __future__ import annotations

import numpy as np

__all__ = ["downlink_rng", "selection_rng", "task_seed"]

# Kept as they were before the engine was split, so runs stay reproducible across versions.
_DOWNLINK = 2


def selection_rng(seed: int, model_version: int, rounds_committed: int) -> np.random.Generator:
    return np.random.default_rng([seed, model_version, rounds_committed])


def task_seed(seed: int, round_: int, n: int) -> int:
    """The local-training seed of the ``n``-th task handed out for ``round_``."""
    return int(np.random.default_rng([seed, round_, n]).integers(2**31))


def downlink_rng(seed: int, round_: int) -> np.random.Generator:
    return np.random.default_rng([seed, round_, _DOWNLINK])
