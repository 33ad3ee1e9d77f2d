"""Datasets, partitions into volunteer shards, and a volunteer's own data files.

The built-in MNIST files store ``uint8`` pixels (scaled to [0, 1] on use); a task's
own data (:func:`parse_task_csv`, :func:`image_dataset`) is model-ready ``float32``.
Labels are ``uint8`` class indices. Partitions are deterministic for a seed, so a simulated volunteer can
compute its own shard and the server can hand out demo shards without storing them.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

__all__ = [
    "Dataset",
    "features",
    "image_dataset",
    "image_inputs",
    "load_image_folder",
    "load_npz",
    "parse_csv",
    "parse_partition",
    "parse_task_csv",
    "parse_unlabelled_csv",
    "partition",
]


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # (n, features) uint8 pixels or float32 model inputs
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
    """uint8 pixels to float32 in [0, 1]; float rows (a task's CSV, decoded images) as float32, unscaled."""
    if x.dtype != np.uint8:
        return np.asarray(x, dtype=np.float32)
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


# --- a task's own files ---------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_INDEX = re.compile(r"[0-9]{1,6}")


def parse_task_csv(data: bytes | str, features: Sequence[str], label: str, classes: Sequence[str]) -> Dataset:
    """A tabular task's labelled CSV: float32 ``x`` in ``features`` order, labels as class indices.

    Columns are matched by header name in any order; other columns, of any type, are
    ignored. A label is a class name or its 0-based index. Errors name the 1-based line
    (the header is line 1) and the column.
    """
    table = _Table.read(data, [*features, label])
    return Dataset(table.numbers(features), _labels(table.lines, table.cells(label), label, classes))


def parse_unlabelled_csv(data: bytes | str, features: Sequence[str]) -> np.ndarray:
    """Rows to predict on: the ``features`` columns (matched like :func:`parse_task_csv`) as float32."""
    return _Table.read(data, list(features)).numbers(features)


def _text(data: bytes | str) -> str:
    """UTF-8 text, or a ValueError that never quotes the bytes (a binary file would garble the page)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("not a text CSV: the file is not UTF-8 text") from None
    text = data.removeprefix("\ufeff")
    bad = _CONTROL.search(text)
    if bad:
        raise ValueError(f"not a text CSV: line {text.count(chr(10), 0, bad.start()) + 1} holds binary bytes")
    return text


@dataclass
class _Table:
    """A CSV's header positions and data rows, read once; columns are taken on demand.

    Unquoted files (the usual case) keep their data lines as text: numeric columns go
    through NumPy's C ``loadtxt`` in one call, and only when it refuses a cell does the
    cell-by-cell path run, to say which line and column. Quoted files need the csv
    module's parser (a Python loop), so only they pay for it.
    """

    lines: np.ndarray  # the file's 1-based line number of each data row
    positions: dict[str, int]
    width: int
    body: list[str] | None  # unquoted data lines, or None
    rows: list[list[str]] | None  # split data rows (quoted files, or after a fallback)

    @classmethod
    def read(cls, data: bytes | str, wanted: list[str]) -> _Table:
        lines = [line.removesuffix("\r") for line in _text(data).split("\n")]
        numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip(" \t,")]
        if not numbered:
            raise ValueError("the file is empty: it needs a header line and data rows")
        body: list[str] | None = None
        rows: list[list[str]] | None = None
        if any('"' in line for _, line in numbered):
            reader = csv.reader(line for _, line in numbered)
            rows, line_of = [], []
            for row in reader:
                rows.append(row)
                line_of.append(numbered[reader.line_num - 1][0])
            header, rows = rows[0], rows[1:]
            widths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        else:
            header = numbered[0][1].split(",")
            line_of = [n for n, _ in numbered]
            body = [line for _, line in numbered[1:]]
            widths = np.fromiter((line.count(",") + 1 for line in body), dtype=np.int64, count=len(body))
        header = [name.strip() for name in header]
        positions: dict[str, int] = {}
        for i, name in enumerate(header):
            if name in positions and name in wanted:
                raise ValueError(f"line {line_of[0]}: column {name!r} appears twice in the header")
            positions.setdefault(name, i)
        missing = [name for name in wanted if name not in positions]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ValueError(f"line {line_of[0]}: the header has no column {missing[0]!r}{more}")
        if not widths.size:
            raise ValueError("the file has a header but no data rows")
        line_numbers = np.asarray(line_of[1:], dtype=np.int64)
        wrong = np.flatnonzero(widths != len(header))
        if wrong.size:
            i = int(wrong[0])
            raise ValueError(f"line {line_numbers[i]}: {widths[i]} values, but the header has {len(header)} columns")
        return cls(line_numbers, positions, len(header), body, rows)

    def cells(self, name: str) -> list[str]:
        j = self.positions[name]
        if self.rows is None:
            assert self.body is not None
            return [line.split(",", j + 1)[j] for line in self.body]
        return [row[j] for row in self.rows]

    def numbers(self, names: Sequence[str]) -> np.ndarray:
        """The ``names`` columns as float32, or a ValueError naming the first bad cell."""
        if self.body is not None:
            try:
                x = np.loadtxt(
                    io.StringIO("\n".join(self.body)), delimiter=",", comments=None, ndmin=2,
                    usecols=[self.positions[n] for n in names], dtype=np.float64,
                )
            except ValueError:
                x = None
            if x is not None and x.shape == (self.lines.size, len(names)) and _representable(x).all():
                return x.astype(np.float32)
            # Let the cell-by-cell path find and name the cell loadtxt refused.
            self.rows = [line.split(",") for line in self.body]
        assert self.rows is not None
        flat = list(chain.from_iterable(self.rows))
        return _numbers(self.lines, [flat[self.positions[n] :: self.width] for n in names], names)


def _representable(values: np.ndarray) -> np.ndarray:
    """Finite and within float32's range (the models' dtype)."""
    return np.isfinite(values) & (np.abs(values) <= np.finfo(np.float32).max)


def _numbers(lines: np.ndarray, columns: list[list[str]], names: Sequence[str]) -> np.ndarray:
    out = np.empty((lines.size, len(columns)), dtype=np.float32)
    for j, (cells, name) in enumerate(zip(columns, names)):
        try:
            values = np.fromiter(map(float, cells), dtype=np.float64, count=len(cells))
        except ValueError:
            i, cell = next((i, c) for i, c in enumerate(cells) if not _is_number(c))
            what = "is empty" if not cell.strip() else f"has {_quote(cell)}, not a number"
            raise ValueError(f"line {lines[i]}, column {name!r} {what}") from None
        bad = np.flatnonzero(~_representable(values))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"line {lines[i]}, column {name!r} has {_quote(cells[i])}, not a finite number")
        out[:, j] = values
    return out


def _labels(lines: np.ndarray, cells: list[str], column: str, classes: Sequence[str]) -> np.ndarray:
    """Class names or 0-based indices to uint8 indices; a name wins over an index that spells it."""
    names = {name: i for i, name in enumerate(classes)}
    index: dict[str, int] = {}
    for value in set(cells):
        key = value.strip()
        if key in names:
            index[value] = names[key]
        elif _INDEX.fullmatch(key) and int(key) < len(classes):
            index[value] = int(key)
        else:
            i = cells.index(value)
            shown = ", ".join(map(repr, classes[:5])) + (", ..." if len(classes) > 5 else "")
            raise ValueError(
                f"line {lines[i]}, column {column!r} has {_quote(value)}: a label must be one of the "
                f"classes ({shown}) or an index 0..{len(classes) - 1}"
            )
    return np.fromiter(map(index.__getitem__, cells), dtype=np.uint8, count=len(cells))


def _quote(cell: str) -> str:
    cell = cell.strip()
    return repr(cell if len(cell) <= 24 else cell[:24] + "...")


def image_inputs(pixels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Decoded images, ``uint8`` ``(n, height, width, channels)``, as float32 rows in [0, 1]."""
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
        raise ValueError("images must be a uint8 array")
    if pixels.ndim != 4 or pixels.shape[1:] != tuple(shape) or pixels.shape[0] < 1:
        raise ValueError(f"images must have shape (n >= 1, {shape[0]}, {shape[1]}, {shape[2]}), got {pixels.shape}")
    return pixels.reshape(pixels.shape[0], -1).astype(np.float32) / np.float32(255.0)


def image_dataset(pixels: np.ndarray, labels: np.ndarray, shape: tuple[int, int, int], num_classes: int) -> Dataset:
    """A volunteer's labelled images (decoded in the browser) as a model-ready dataset."""
    x = image_inputs(pixels, shape)
    labels = np.asarray(labels)
    if labels.shape != (x.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be {x.shape[0]} integers, one per image, got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be class indices in 0..{num_classes - 1}")
    return Dataset(x, labels.astype(np.uint8))


#: The files an image folder's class sub-folders are read for; others (``.DS_Store``,
#: ``Thumbs.db``, notes) are skipped.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_image_folder(root: Path, shape: tuple[int, int, int], classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """An image folder as a volunteer picks one: a sub-folder per class, named as the
    class, of PNG or JPEG files. Each is decoded, converted to ``shape``'s channels (1:
    grayscale, 3: RGB) and stretched to its height and width, as the browser does;
    returns ``uint8`` ``(n, height, width, channels)`` pixels and their class indices.

    A ``ValueError`` names what is wrong: a sub-folder no class is named as, a file that
    does not decode, a folder with no images. Decoding needs Pillow (``webfl[images]``):
    it is imported here only, so the browser's wheel never needs it.
    """
    try:
        from PIL import Image
    except ImportError:
        raise ValueError("reading an image folder needs Pillow: pip install 'webfl[images]'") from None
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (an image task's data is a folder with one sub-folder per class)")
    folders = {p.name: p for p in root.iterdir() if p.is_dir()}
    unknown = sorted(set(folders) - set(classes))
    if unknown:
        raise ValueError(f"{root}: sub-folder {unknown[0]!r} is not a class of the task ({', '.join(classes)})")
    height, width, channels = shape
    mode = "L" if channels == 1 else "RGB"
    pixels, labels = [], []
    for label, name in enumerate(classes):
        if name not in folders:
            continue
        for path in sorted(folders[name].iterdir()):
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as image:
                    image = image.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
                    pixels.append(np.asarray(image, dtype=np.uint8).reshape(height, width, channels))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
                raise ValueError(f"{path}: not a PNG or JPEG image that decodes ({exc})") from None
            labels.append(label)
    if not pixels:
        raise ValueError(f"{root}: no {', '.join(IMAGE_SUFFIXES)} images in sub-folders named as the classes ({', '.join(classes)})")
    return np.stack(pixels), np.asarray(labels, dtype=np.uint8)
