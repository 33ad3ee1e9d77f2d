"""Task definitions as data: validation naming the field, round trips, the built-in tasks."""

import copy

import numpy as np
import pytest

from webfl.build import paths
from webfl.core.cnn import CNN
from webfl.core.data import load_npz
from webfl.core.models import MLP
from webfl.core.stats import Standardised
from webfl.core.tasks import BUILT_IN, MAX_FEATURES, Kind, Task, get_task
from webfl.core.training import TrainConfig, local_train

TABULAR = {
    "name": "heart-2", "title": "Heart disease", "description": "Predict it.\nFrom tests.",
    "kind": "tabular", "features": ["age", "chol", "bp"], "label": "target", "classes": ["no", "yes"],
    "model": {"type": "mlp", "hidden": [8]},
}
IMAGE = {
    "name": "cats", "title": "Cats", "kind": "image", "width": 32, "height": 24, "channels": 3,
    "classes": ["cat", "dog", "bird"], "model": {"type": "cnn", "conv": [8, 16], "dense": [32]},
}


def test_tabular_definition_fills_defaults_and_round_trips():
    task = Task.from_json(TABULAR)
    assert task.kind is Kind.TABULAR and task.num_features == 3 and task.num_classes == 2
    assert task.model == "mlp-8" and task.needs_statistics and task.holdout == 0.2
    defaults = TrainConfig()
    assert (task.training.epochs, task.training.batch_size, task.training.lr) == (defaults.epochs, defaults.batch_size, defaults.lr)
    doc = task.to_json()
    assert Task.from_json(doc) == task and Task.from_json(copy.deepcopy(doc)).to_json() == doc
    assert isinstance(task.build_model(), MLP)


def test_image_definition_builds_a_cnn_and_round_trips():
    task = Task.from_json(IMAGE)
    assert task.num_features == 32 * 24 * 3 and task.model == "cnn-8-16-k3-d32" and not task.needs_statistics
    model = task.build_model()
    assert isinstance(model, CNN) and model.input_shape == (24, 32, 3)
    assert Task.from_json(task.to_json()) == task


def test_scaling_makes_a_model_on_raw_features_and_round_trips():
    task = Task.from_json({**TABULAR, "scaling": {"mean": [50, 200, 120], "std": [10, 40, 15]}})
    assert not task.needs_statistics and isinstance(task.build_model(), Standardised)
    assert Task.from_json(task.to_json()) == task
    fixed = Task.from_json(TABULAR).with_scaling([1.0, 2.0, 3.0], [1.0, 1.0, 0.5])
    assert fixed.scaling.std == (1.0, 1.0, 0.5) and fixed.name == "heart-2"
    with pytest.raises(ValueError, match="scaling.std"):
        Task.from_json(TABULAR).with_scaling([1.0, 2.0, 3.0], [1.0, 0.0, 1.0])


def test_to_dict_keeps_what_the_server_and_pages_read_and_inverts():
    task = BUILT_IN["mnist"]
    d = task.to_dict()
    assert {k: d[k] for k in ("name", "num_features", "num_classes", "model")} == {
        "name": "mnist", "num_features": 784, "num_classes": 10, "model": "2nn"}
    assert d["title"] == "Handwritten digits" and Task.from_dict(d) == task
    with pytest.raises(ValueError):
        Task.from_dict({"name": "mnist"})


def _with(base, path, value):
    doc = copy.deepcopy(base)
    *parents, key = path.split(".")
    target = doc
    for p in parents:
        target = target[p]
    if value is KeyError:
        del target[key]
    else:
        target[key] = value
    return doc


@pytest.mark.parametrize(("base", "path", "value", "field"), [
    (TABULAR, "name", "Heart", "name"),
    (TABULAR, "name", "x" * 41, "name"),
    (TABULAR, "name", 7, "name"),
    (TABULAR, "title", "", "title"),
    (TABULAR, "title", "a\x00b", "title"),
    (TABULAR, "description", "bell\x07", "description"),
    (TABULAR, "kind", "audio", "kind"),
    (TABULAR, "kind", KeyError, "kind"),
    (TABULAR, "classes", ["only"], "classes"),
    (TABULAR, "classes", ["a", "a"], "classes"),
    (TABULAR, "classes", KeyError, "classes"),
    (TABULAR, "classes", ["a", 1], r"classes\[1\]"),
    (TABULAR, "features", [], "features"),
    (TABULAR, "features", [f"f{i}" for i in range(MAX_FEATURES + 1)], "features"),
    (TABULAR, "features", ["age", "age"], "features"),
    (TABULAR, "features", ["age", " chol"], r"features\[1\]"),
    (TABULAR, "label", "age", "label"),
    (TABULAR, "label", KeyError, "label"),
    (TABULAR, "model", {"type": "transformer"}, "model.type"),
    (TABULAR, "model", {"type": "cnn", "conv": [4]}, "model.type"),
    (TABULAR, "model.hidden", [8, 0], r"model.hidden\[1\]"),
    (TABULAR, "model.hidden", [8, True], r"model.hidden\[1\]"),
    (TABULAR, "model.hidden", "8", "model.hidden"),
    (TABULAR, "model.layers", 3, "model.layers"),
    (TABULAR, "model", {"type": "mlp", "hidden": [4096, 4096]}, "model"),  # 16.8M parameters
    (TABULAR, "scaling", {"mean": [0, 0], "std": [1, 1]}, "scaling.mean"),
    (TABULAR, "scaling", {"mean": [0, 0, 0], "std": [1, -1, 1]}, "scaling.std"),
    (TABULAR, "scaling", {"mean": [0, 0, float("nan")], "std": [1, 1, 1]}, "scaling.mean"),
    (TABULAR, "training", {"epochs": 0}, "training.epochs"),
    (TABULAR, "training", {"epochs": 101}, "training.epochs"),
    (TABULAR, "training", {"lr": 0}, "training.lr"),
    (TABULAR, "training", {"batch_size": 1.5}, "training.batch_size"),
    (TABULAR, "training", {"momentum": 0.9}, "training.momentum"),
    (TABULAR, "holdout", 0.9, "holdout"),
    (TABULAR, "holdout", "0.2", "holdout"),
    (TABULAR, "width", 8, "width"),  # an image field on a tabular task is unknown
    (TABULAR, "colour", "red", "colour"),
    (IMAGE, "width", 257, "width"),
    (IMAGE, "height", 0, "height"),
    (IMAGE, "channels", 2, "channels"),
    (IMAGE, "channels", 4, "channels"),
    (IMAGE, "features", ["a"], "features"),
    (IMAGE, "scaling", {"mean": [0], "std": [1]}, "scaling"),
    (IMAGE, "model.kernel", 4, "model.kernel"),
    (IMAGE, "model.conv", [], "model.conv"),
    (IMAGE, "model.conv", [8, 8, 8, 8, 8], "model.conv"),
    (IMAGE, "model.conv", [300], r"model.conv\[0\]"),
    ({**IMAGE, "width": 4, "height": 4}, "model.conv", [8, 8, 8], "model"),  # 4x4 pools only twice
    ({**IMAGE, "width": 256, "height": 256, "model": {"type": "cnn", "conv": [64, 64]}}, "model.kernel", 3, "model.conv"),  # im2col memory
])
def test_malformed_definitions_name_the_field(base, path, value, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        Task.from_json(_with(base, path, value))


def test_a_definition_must_be_an_object():
    for bad in (None, [], "mnist", 3):
        with pytest.raises(ValueError, match="^task: expected a JSON object"):
            Task.from_json(bad)


def test_mnist_is_the_same_task_as_before():
    task = get_task("mnist")
    assert task is BUILT_IN["mnist"] and get_task("breast-cancer") is BUILT_IN["breast-cancer"]
    assert (task.name, task.title, task.model, task.num_features, task.num_classes) == (
        "mnist", "Handwritten digits", "2nn", 784, 10)
    assert task.build_model().sizes == (784, 200, 200, 10)
    assert task.build_model().init(0).tobytes() == MLP((784, 200, 200, 10)).init(0).tobytes()
    softmax = get_task("mnist", "softmax")
    assert softmax.model == "softmax" and softmax.build_model().sizes == (784, 10)
    with pytest.raises(ValueError, match="unknown model"):
        get_task("mnist", "resnet")
    with pytest.raises(ValueError, match="unknown task"):
        get_task("cifar")


def test_breast_cancer_task_reads_its_built_csv():
    task = BUILT_IN["breast-cancer"]
    data = task.parse_csv(paths.BREAST_CANCER_CSV.read_bytes())
    assert data.x.shape == (569, 30) and data.x.dtype == np.float32
    assert np.bincount(data.y).tolist() == [212, 357]  # malignant, benign
    assert task.needs_statistics and task.num_features == 30


def test_digits_task_trains_its_cnn_on_the_built_digits():
    task = BUILT_IN["digits"]
    train, test = load_npz(paths.DIGITS_NPZ, "train"), load_npz(paths.DIGITS_NPZ, "test")
    x = task.images(train.x.reshape(-1, 8, 8, 1))
    x_test = task.images(test.x.reshape(-1, 8, 8, 1))
    model = task.build_model()
    params = model.init(0)
    config = TrainConfig(epochs=3, batch_size=task.training.batch_size, lr=task.training.lr, seed=0)
    trained = local_train(model, params, x, train.y, config)
    assert model.evaluate(trained.params, x_test, test.y)[1] > 0.93


def test_data_of_the_wrong_kind_is_refused():
    with pytest.raises(ValueError, match="tabular task"):
        BUILT_IN["breast-cancer"].images(np.zeros((1, 8, 8, 1), np.uint8), np.zeros(1, int))
    with pytest.raises(ValueError, match="image task"):
        BUILT_IN["digits"].parse_csv("a\n1\n")
