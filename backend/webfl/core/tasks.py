"""Learning tasks as data: what is trained, on what kind of examples, with which model.

A task is a JSON document an operator writes (see :meth:`Task.from_json`)::

    {"name": "breast-cancer", "title": "...", "description": "...", "kind": "tabular",
     "features": ["mean radius", ...], "label": "diagnosis", "classes": ["malignant", "benign"],
     "model": {"type": "mlp", "hidden": [16]},
     "scaling": {"mean": [...], "std": [...]},          # optional (tabular)
     "training": {"epochs": 2, "batch_size": 32, "lr": 0.1},   # optional
     "holdout": 0.2}                                    # optional

Image tasks give ``width``, ``height`` and ``channels`` instead of ``features`` and
``label``, and may use ``{"type": "cnn", "conv": [16, 32], "kernel": 3, "dense": [64]}``.
Every malformed document is a ValueError naming the field, for a 400 answer.
A tabular task without ``scaling`` needs federated statistics before round 1
(:attr:`Task.needs_statistics`, :meth:`Task.with_scaling`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

import numpy as np

from .cnn import CNN
from .data import Dataset, image_dataset, image_inputs, parse_task_csv, parse_unlabelled_csv
from .models import MLP, MODELS
from .stats import Standardised
from .training import TrainConfig

__all__ = [
    "BUILT_IN",
    "CNNSpec",
    "Kind",
    "MLPSpec",
    "Scaling",
    "Task",
    "TrainDefaults",
    "get_task",
]

NAME = re.compile(r"[a-z0-9-]{1,40}")
MAX_FEATURES = 4096
#: Labels travel as uint8 class indices.
MAX_CLASSES = 256
MAX_SIDE = 256
#: Bounds the server's O(model) aggregation memory and every volunteer's download.
MAX_PARAMS = 4_000_000
#: im2col floats one image needs at its largest conv stage: bounds a volunteer's memory.
MAX_IM2COL = 4 * 2**20
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: A description may hold line breaks and tabs (it is shown as plain text).
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class Kind(StrEnum):
    TABULAR = "tabular"
    IMAGE = "image"


@dataclass(frozen=True)
class MLPSpec:
    """``{"type": "mlp", "hidden": [...]}``; ``[]`` is softmax regression."""

    hidden: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        """Short name (store keys, file names): a named architecture's name, else ``mlp-H1-H2``."""
        named = next((n for n, sizes in MODELS.items() if sizes[1:-1] == self.hidden), None)
        return named or "mlp-" + "-".join(map(str, self.hidden))

    def build(self, task: Task) -> MLP:
        return MLP((task.num_features, *self.hidden, task.num_classes))

    def to_json(self) -> dict:
        return {"type": "mlp", "hidden": list(self.hidden)}


@dataclass(frozen=True)
class CNNSpec:
    """``{"type": "cnn", "conv": [channels, ...], "kernel": 3, "dense": [...]}`` (image tasks)."""

    conv: tuple[int, ...]
    kernel: int = 3
    dense: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        dense = "-d" + "-".join(map(str, self.dense)) if self.dense else ""
        return f"cnn-{'-'.join(map(str, self.conv))}-k{self.kernel}{dense}"

    def build(self, task: Task) -> CNN:
        return CNN((task.height, task.width, task.channels), self.conv, self.kernel, self.dense, task.num_classes)

    def to_json(self) -> dict:
        return {"type": "cnn", "conv": list(self.conv), "kernel": self.kernel, "dense": list(self.dense)}


@dataclass(frozen=True)
class Scaling:
    """Per-feature ``mean`` and ``std`` (> 0) a tabular model standardises its raw inputs with."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_json(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


#: The engine's own defaults, so a task without ``training`` trains as runs do today.
_TRAIN_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


@dataclass(frozen=True)
class TrainDefaults:
    """A task's local training defaults; a run's settings may override them."""

    epochs: int = _TRAIN_DEFAULTS["epochs"]
    batch_size: int = _TRAIN_DEFAULTS["batch_size"]
    lr: float = _TRAIN_DEFAULTS["lr"]

    def config(self, seed: int) -> TrainConfig:
        return TrainConfig(self.epochs, self.batch_size, self.lr, seed)

    def to_json(self) -> dict:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}


@dataclass(frozen=True)
class Task:
    """A validated task definition; build one with :meth:`from_json`."""

    name: str
    title: str
    description: str
    kind: Kind
    classes: tuple[str, ...]
    model_spec: MLPSpec | CNNSpec
    features: tuple[str, ...] = ()
    label: str = ""
    width: int = 0
    height: int = 0
    channels: int = 0
    scaling: Scaling | None = None
    training: TrainDefaults = TrainDefaults()
    holdout: float = 0.2

    @property
    def model(self) -> str:
        """The model's short name (``2nn``, ``softmax``, ``mlp-16``, ``cnn-16-32-k3-d64``)."""
        return self.model_spec.key

    @property
    def num_features(self) -> int:
        return len(self.features) if self.kind is Kind.TABULAR else self.width * self.height * self.channels

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def needs_statistics(self) -> bool:
        """A tabular task whose scaling must be measured by federated statistics before round 1."""
        return self.kind is Kind.TABULAR and self.scaling is None

    def build_model(self) -> MLP | CNN | Standardised:
        """The model; with scaling it takes raw features and standardises them itself."""
        model = self.model_spec.build(self)
        if self.scaling is None:
            return model
        return Standardised(model, np.asarray(self.scaling.mean), np.asarray(self.scaling.std))

    def with_scaling(self, mean: Sequence[float], std: Sequence[float]) -> Task:
        """This task with its scaling fixed (from federated statistics), validated like a definition."""
        return Task.from_json({**self.to_json(), "scaling": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}})

    # --- a volunteer's data, in the task's terms ---

    def parse_csv(self, data: bytes | str) -> Dataset:
        """A tabular task's labelled CSV (see :func:`webfl.core.data.parse_task_csv`)."""
        self._expect(Kind.TABULAR)
        return parse_task_csv(data, self.features, self.label, self.classes)

    def parse_unlabelled_csv(self, data: bytes | str) -> np.ndarray:
        """Rows to predict on, without the label column."""
        self._expect(Kind.TABULAR)
        return parse_unlabelled_csv(data, self.features)

    def images(self, pixels: np.ndarray, labels: np.ndarray | None = None) -> Dataset | np.ndarray:
        """Decoded ``uint8`` images ``(n, height, width, channels)``: a dataset, or inputs without labels."""
        self._expect(Kind.IMAGE)
        shape = (self.height, self.width, self.channels)
        return image_inputs(pixels, shape) if labels is None else image_dataset(pixels, labels, shape, self.num_classes)

    def _expect(self, kind: Kind) -> None:
        if self.kind is not kind:
            raise ValueError(f"task {self.name!r} is a {self.kind} task, not {kind}")

    # --- JSON ---

    def to_json(self) -> dict:
        """The definition document; ``Task.from_json(task.to_json()) == task``."""
        out: dict[str, Any] = {"name": self.name, "title": self.title, "description": self.description, "kind": str(self.kind)}
        if self.kind is Kind.TABULAR:
            out |= {"features": list(self.features), "label": self.label}
        else:
            out |= {"width": self.width, "height": self.height, "channels": self.channels}
        out |= {"classes": list(self.classes), "model": self.model_spec.to_json()}
        if self.scaling is not None:
            out["scaling"] = self.scaling.to_json()
        return out | {"training": self.training.to_json(), "holdout": self.holdout}

    def to_dict(self) -> dict:
        """What the server sends and renders: the summary fields pages use, and the definition."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "num_features": self.num_features,
            "num_classes": self.num_classes,
            "model": self.model,
            "definition": self.to_json(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        """Inverse of :meth:`to_dict` (a volunteer reads its ``welcome``)."""
        if not isinstance(d, dict) or "definition" not in d:
            raise ValueError("task: expected an object with a 'definition'")
        return cls.from_json(d["definition"])

    @classmethod
    def from_json(cls, obj: object) -> Task:
        """Validate a definition document; a ValueError names the field that is wrong."""
        r = _Reader(obj, "task")
        name = r.text("name", 1, 40)
        if not NAME.fullmatch(name):
            raise ValueError(f"name: {name!r} must be 1-40 of a-z, 0-9 and '-'")
        title = r.text("title", 1, 200)
        description = r.text("description", 0, 10_000, default="", multiline=True)
        kind_value = r.text("kind", 1, 20)
        try:
            kind = Kind(kind_value)
        except ValueError:
            raise ValueError(f"kind: {kind_value!r} is not 'tabular' or 'image'") from None
        classes = r.names("classes", 2, MAX_CLASSES, 100)
        shape: dict[str, Any] = {}
        if kind is Kind.TABULAR:
            features = r.names("features", 1, MAX_FEATURES, 200)
            label = r.text("label", 1, 200)
            if label in features:
                raise ValueError(f"label: {label!r} is also one of the features")
            shape = {"features": features, "label": label}
        else:
            shape = {"width": r.integer("width", 1, MAX_SIDE), "height": r.integer("height", 1, MAX_SIDE)}
            shape["channels"] = r.integer("channels", 1, 3)
            if shape["channels"] == 2:
                raise ValueError("channels: must be 1 (grayscale) or 3 (RGB)")
        model_spec = _model_spec(r.obj("model"), kind)
        scaling = None
        if r.has("scaling") and r.peek("scaling") is not None:
            if kind is not Kind.TABULAR:
                raise ValueError("scaling: only tabular tasks have feature scaling (images are scaled to [0, 1])")
            scaling = _scaling(r.obj("scaling"), len(shape["features"]))
        else:
            r.take("scaling", None)
        training = _training(r.obj("training", default={}))
        holdout = r.number("holdout", 0.0, 0.5, default=0.2)
        r.done()
        task = cls(name, title, description, kind, classes, model_spec, scaling=scaling, training=training, holdout=holdout, **shape)
        _check_model(task)
        return task


# --- validation ---------------------------------------------------------------------------

_MISSING = object()


class _Reader:
    """Takes typed fields out of one JSON object; ``done()`` rejects any left over (typos)."""

    def __init__(self, obj: object, where: str) -> None:
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        self.rest, self.where = dict(obj), where

    def _path(self, key: str) -> str:
        return key if self.where == "task" else f"{self.where}.{key}"

    def has(self, key: str) -> bool:
        return key in self.rest

    def peek(self, key: str) -> object:
        return self.rest.get(key)

    def take(self, key: str, default: object = _MISSING) -> object:
        if key in self.rest:
            return self.rest.pop(key)
        if default is _MISSING:
            raise ValueError(f"{self._path(key)}: missing")
        return default

    def text(self, key: str, lo: int, hi: int, default: object = _MISSING, multiline: bool = False) -> str:
        v = self.take(key, default)
        return _text(v, self._path(key), lo, hi, multiline)

    def integer(self, key: str, lo: int, hi: int, default: object = _MISSING) -> int:
        return _integer(self.take(key, default), self._path(key), lo, hi)

    def number(self, key: str, lo: float, hi: float, default: object = _MISSING) -> float:
        v = self.take(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"{self._path(key)}: must be a number in [{lo}, {hi}], got {v!r}")
        return float(v)

    def obj(self, key: str, default: object = _MISSING) -> _Reader:
        return _Reader(self.take(key, default), self._path(key))

    def names(self, key: str, lo: int, hi: int, max_len: int) -> tuple[str, ...]:
        v = self.take(key)
        path = self._path(key)
        if not isinstance(v, list) or not lo <= len(v) <= hi:
            raise ValueError(f"{path}: must be a list of {lo} to {hi} names")
        out = tuple(_text(e, f"{path}[{i}]", 1, max_len, False) for i, e in enumerate(v))
        seen: set[str] = set()
        for e in out:
            if e in seen:
                raise ValueError(f"{path}: {e!r} appears twice")
            seen.add(e)
        return out

    def ints(self, key: str, lo: int, hi: int, max_count: int, min_count: int = 0, default: object = _MISSING) -> tuple[int, ...]:
        v = self.take(key, default)
        path = self._path(key)
        if not isinstance(v, list) or not min_count <= len(v) <= max_count:
            raise ValueError(f"{path}: must be a list of {min_count} to {max_count} integers")
        return tuple(_integer(e, f"{path}[{i}]", lo, hi) for i, e in enumerate(v))

    def done(self) -> None:
        if self.rest:
            raise ValueError(f"{self._path(sorted(self.rest)[0])}: unknown field")


def _text(v: object, path: str, lo: int, hi: int, multiline: bool) -> str:
    if not isinstance(v, str) or not lo <= len(v) <= hi:
        raise ValueError(f"{path}: must be a string of {lo} to {hi} characters")
    if not multiline and v != v.strip():
        raise ValueError(f"{path}: {v!r} has leading or trailing spaces")
    if (_CONTROL_MULTILINE if multiline else _CONTROL).search(v):
        raise ValueError(f"{path}: holds a control character")
    return v


def _integer(v: object, path: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{path}: must be an integer in {lo}..{hi}, got {v!r}")
    return v


def _model_spec(r: _Reader, kind: Kind) -> MLPSpec | CNNSpec:
    kind_of_model = r.text("type", 1, 20)
    if kind_of_model == "mlp":
        spec: MLPSpec | CNNSpec = MLPSpec(r.ints("hidden", 1, 4096, 8, default=[]))
    elif kind_of_model == "cnn":
        if kind is not Kind.IMAGE:
            raise ValueError("model.type: 'cnn' is for image tasks only")
        conv = r.ints("conv", 1, 256, 4, min_count=1)
        kernel = r.integer("kernel", 1, 7, default=3)
        if kernel % 2 == 0:
            raise ValueError(f"model.kernel: must be odd (same padding), got {kernel}")
        spec = CNNSpec(conv, kernel, r.ints("dense", 1, 4096, 4, default=[]))
    else:
        raise ValueError(f"model.type: {kind_of_model!r} is not 'mlp' or 'cnn'")
    r.done()
    return spec


def _check_model(task: Task) -> None:
    """Sizes only a built model knows: pooling depth, parameter count, im2col memory."""
    try:
        model = task.model_spec.build(task)
    except ValueError as e:
        raise ValueError(f"model: {e}") from None
    if model.size > MAX_PARAMS:
        raise ValueError(f"model: {model.size:,} parameters, at most {MAX_PARAMS:,}: use smaller layers")
    if isinstance(model, CNN):
        if model.im2col_size > MAX_IM2COL:
            raise ValueError(
                f"model.conv: {model.im2col_size:,} im2col values per image, at most {MAX_IM2COL:,}: "
                "use smaller images or fewer channels"
            )


def _scaling(r: _Reader, num_features: int) -> Scaling:
    out = []
    for key in ("mean", "std"):
        v = r.take(key)
        if not isinstance(v, list) or len(v) != num_features or not all(
            isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) for e in v
        ):
            raise ValueError(f"scaling.{key}: must be a list of {num_features} finite numbers (one per feature)")
        out.append(tuple(float(e) for e in v))
    if min(out[1]) <= 0:
        raise ValueError("scaling.std: every value must be > 0")
    r.done()
    return Scaling(out[0], out[1])


def _training(r: _Reader) -> TrainDefaults:
    d = TrainDefaults()
    epochs, batch_size = r.integer("epochs", 1, 10**6, default=d.epochs), r.integer("batch_size", 1, 10**9, default=d.batch_size)
    lr = r.number("lr", 0.0, 1e9, default=d.lr)
    r.done()
    try:
        TrainConfig(epochs, batch_size, lr)  # the engine's bounds, in one place
    except ValueError as e:
        raise ValueError(f"training.{e}") from None
    return TrainDefaults(epochs, batch_size, lr)


# --- built-in tasks -----------------------------------------------------------------------

_NUCLEUS = ("radius", "texture", "perimeter", "area", "smoothness", "compactness",
            "concavity", "concave points", "symmetry", "fractal dimension")
#: scikit-learn's names of the breast cancer features, in its order (``load_breast_cancer().feature_names``).
BREAST_CANCER_FEATURES = (
    [f"mean {n}" for n in _NUCLEUS] + [f"{n} error" for n in _NUCLEUS] + [f"worst {n}" for n in _NUCLEUS]
)

BUILT_IN: dict[str, Task] = {
    task.name: task
    for task in map(Task.from_json, [
        {
            "name": "mnist",
            "title": "Handwritten digits",
            "description": "Recognise handwritten digits (0-9) from 28x28 grayscale images.",
            "kind": "image", "width": 28, "height": 28, "channels": 1,
            "classes": [str(d) for d in range(10)],
            "model": {"type": "mlp", "hidden": list(MODELS["2nn"][1:-1])},
        },
        {
            "name": "breast-cancer",
            "title": "Breast cancer diagnosis",
            "description": "Tell malignant from benign breast masses from 30 measurements of cell nuclei "
                           "in a biopsy image (Wisconsin Diagnostic Breast Cancer data).",
            "kind": "tabular", "features": BREAST_CANCER_FEATURES, "label": "diagnosis",
            "classes": ["malignant", "benign"],
            "model": {"type": "mlp", "hidden": [16]},
            "training": {"epochs": 5, "batch_size": 16, "lr": 0.1},
        },
        {
            "name": "digits",
            "title": "Small handwritten digits",
            "description": "Recognise handwritten digits (0-9) from 8x8 grayscale images.",
            "kind": "image", "width": 8, "height": 8, "channels": 1,
            "classes": [str(d) for d in range(10)],
            "model": {"type": "cnn", "conv": [16, 32], "kernel": 3, "dense": [64]},
            "training": {"epochs": 2, "batch_size": 16, "lr": 0.1},
        },
    ])
}

def get_task(name: str, model: str | None = None) -> Task:
    """A built-in task; ``model`` swaps in a named MLP architecture (``webfl serve --model``)."""
    try:
        task = BUILT_IN[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; built in: {', '.join(BUILT_IN)}") from None
    if model is not None and model != task.model:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
        task = replace(task, model_spec=MLPSpec(MODELS[model][1:-1]))
    return task
