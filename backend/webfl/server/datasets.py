"""The task's dataset on the server: the held-out split for evaluation and the
demo shards handed to browser volunteers who have no data of their own."""

from __future__ import annotations

import itertools
from functools import cache
from pathlib import Path

from ..core.data import load_npz, partition

__all__ = ["DEMO_TASK", "DemoShards"]

#: The task whose data the server holds: demo shards for volunteers, held-out digits.
DEMO_TASK = "mnist"


class DemoShards:
    """Deterministic shards of the training split, assigned round-robin."""

    def __init__(self, path: Path, spec: str, num_shards: int, seed: int) -> None:
        if not path.exists():
            raise FileNotFoundError(f"dataset {path} is missing; run `make setup` to build it")
        self.path, self.spec, self.num_shards, self.seed = path, spec, num_shards, seed
        self.test = load_npz(path, "test")
        self._train = load_npz(path, "train")
        self._shards = partition(self._train.y, num_shards, spec, seed)
        self._next = itertools.count()

    def assign(self, task: str) -> dict:
        """The shard the next volunteer gets, as a ``welcome.shard`` description."""
        index = next(self._next) % self.num_shards
        return {
            "index": index,
            "count": self.num_shards,
            "partition": self.spec,
            "url": f"/data/{task}/shards/{index}.npz",
            "demo": True,
        }

    @cache
    def shard_npz(self, index: int) -> bytes:
        if not 0 <= index < self.num_shards:
            raise IndexError(index)
        return self._train.take(self._shards[index]).to_npz()
