"""Datasets, partitions into volunteer shards, and a volunteer's own CSV file.

A dataset is stored as ``uint8`` features (scaled to [0, 1] on use) and ``uint8``
labels. Partitions are deterministic for a seed, so a simulated volunteer can
compute its own shard and the server can hand out demo shards without storing them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

__all__ = ["Dataset", "features", "load_npz", "parse_csv", "partition", "parse_partition"]


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # (n, features) uint8
    y: np.ndarray  # (n,) uint8

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, idx: np.ndarray) -> Dataset:
        return Dataset(self.x[idx], self.y[idx])

    def to_npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, x=self.x, y=self.y)
        return buf.getvalue()


def features(x: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [0, 1]."""
    return x.astype(np.float32) / np.float32(255.0)


def load_npz(source, split: str) -> Dataset:
    """``split`` ("train" or "test") of a task file with ``x_train, y_train, x_test, y_test``.

    ``source`` is a path or bytes (the browser fetches the file itself).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    with np.load(source, allow_pickle=False) as f:
        return Dataset(f[f"x_{split}"], f[f"y_{split}"])


def parse_partition(spec: str) -> tuple[str, float]:
    """``"iid"``, ``"noniid"`` or ``"dirichlet:ALPHA"`` to ``(kind, alpha)``."""
    kind, _, arg = spec.partition(":")
    if kind in ("iid", "noniid") and not arg:
        return kind, 0.0
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = 0.0
        if alpha > 0:
            return kind, alpha
    raise ValueError(f"unknown partition {spec!r}: use iid, noniid or dirichlet:ALPHA (ALPHA > 0)")


def partition(labels: np.ndarray, num_shards: int, spec: str = "iid", seed: int = 0) -> list[np.ndarray]:
    """Split example indices into ``num_shards`` volunteer shards.

    - ``iid``: a uniform random split.
    - ``noniid``: McMahan et al. 2017's pathological split: sort by label, cut into
      ``2 * num_shards`` pieces, give each volunteer two (so about two labels each).
    - ``dirichlet:ALPHA``: each label's examples are divided among volunteers in
      proportions drawn from Dirichlet(ALPHA) (Hsu et al. 2019); small ALPHA is skewed.
    """
    kind, alpha = parse_partition(spec)
    if num_shards < 1 or num_shards > len(labels):
        raise ValueError(f"cannot split {len(labels)} examples into {num_shards} shards")
    rng = np.random.default_rng(seed)
    if kind == "iid":
        return [np.sort(s) for s in np.array_split(rng.permutation(len(labels)), num_shards)]
    if kind == "noniid":
        order = np.argsort(labels, kind="stable")
        pieces = np.array_split(order, 2 * num_shards)
        pairs = rng.permutation(2 * num_shards).reshape(num_shards, 2)
        return [np.sort(np.concatenate([pieces[a], pieces[b]])) for a, b in pairs]
    shards: list[list[np.ndarray]] = [[] for _ in range(num_shards)]
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        cuts = (np.cumsum(rng.dirichlet(np.full(num_shards, alpha)))[:-1] * len(idx)).astype(int)
        for shard, part in zip(shards, np.split(idx, cuts)):
            shard.append(part)
    out = [np.sort(np.concatenate(s)) for s in shards]
    # A volunteer with no examples cannot train: lend it one from the largest shard.
    for i in np.flatnonzero([len(s) == 0 for s in out]):
        donor = int(np.argmax([len(s) for s in out]))
        out[i], out[donor] = out[donor][-1:], out[donor][:-1]
    return out


def parse_csv(text: str, num_features: int, num_classes: int) -> Dataset:
    """A volunteer's own CSV: one example per row, the label first, then the features.

    Features may be in [0, 1] or [0, 255]; a header row is skipped. Errors name the
    offending row so the page can tell the volunteer what to fix.
    """
    rows = [line for line in text.splitlines() if line.strip()]
    if rows and not _is_number(rows[0].split(",")[0]):
        rows = rows[1:]
    if not rows:
        raise ValueError("the file has no data rows")
    try:
        table = np.loadtxt(io.StringIO("\n".join(rows)), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"not a numeric CSV: {exc}") from None
    if table.shape[1] != num_features + 1:
        raise ValueError(f"each row needs a label and {num_features} features, got {table.shape[1]} columns")
    labels, x = table[:, 0], table[:, 1:]
    bad = np.flatnonzero((labels != np.round(labels)) | (labels < 0) | (labels >= num_classes))
    if bad.size:
        raise ValueError(f"row {bad[0] + 1}: label must be an integer in 0..{num_classes - 1}")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 255:
        raise ValueError("features must be finite numbers in [0, 1] or [0, 255]")
    scale = 255.0 if x.max() <= 1.0 else 1.0
    return Dataset(np.round(x * scale).astype(np.uint8), labels.astype(np.uint8))


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True
