"""The model on the volunteer's device: predictions, the kept model, a personal fine-tune, and the pages that offer them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from servers import TOKEN
from starlette.testclient import TestClient

from webfl.core.browser import PREDICTIONS_SHOWN, BrowserSession
from webfl.core.evaluation import evaluation_sums
from webfl.core.models import softmax
from webfl.core.predict import personalise, predict
from webfl.core.protocol import Message, encode
from webfl.core.tasks import BUILT_IN, Task
from webfl.core.training import local_train
from webfl.server.app import create_app
from webfl.server.config import Settings

HEART = {
    "name": "heart", "title": "Heart", "kind": "tabular", "features": ["age", "chol"], "label": "target",
    "classes": ["no", "yes"], "model": {"type": "mlp", "hidden": [4]},
    "scaling": {"mean": [50.0, 200.0], "std": [10.0, 40.0]}, "training": {"epochs": 10, "batch_size": 8, "lr": 0.1},
}


def heart_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.normal(50, 10, n), rng.normal(200, 40, n)]).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] / 4 > 100).astype(np.uint8)


def csv_of(x: np.ndarray, y: np.ndarray | None = None, order=("chol", "age")) -> str:
    cols = {"age": x[:, 0], "chol": x[:, 1]}
    head = list(order) + (["target"] if y is not None else [])
    lines = [",".join(head)]
    for i in range(x.shape[0]):
        cells = [repr(float(cols[c][i])) for c in order] + ([["no", "yes"][y[i]]] if y is not None else [])
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def session_with_model(definition: dict, params: np.ndarray, version: int = 3) -> BrowserSession:
    """A session that got welcome and a full model frame, as from a server."""
    task = Task.from_json(definition)
    s = BrowserSession("test", definition)
    s.hello()
    s.receive(encode(Message("welcome", {"version": "x", "volunteer": "v1", "task": task.to_dict()})))
    s.receive(encode(Message("model", {"model_version": version, "codec": "none", "codec_params": {}}, (params.astype(np.float32),))))
    assert s.volunteer.params is not None
    return s


def test_predict_is_the_softmax_of_the_models_forward_pass_in_batches():
    task = Task.from_json(HEART)
    model = task.build_model()
    params = model.init(1)
    x, _ = heart_rows(1203)
    out = predict(model, params, x, batch=500)
    assert out.probabilities.shape == (1203, 2) and out.probabilities.dtype == np.float32
    np.testing.assert_allclose(out.probabilities, softmax(model.logits(params, x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1, rtol=1e-5)
    shown = out.to_dict(task.classes, 10)
    assert shown["rows"] == 1203 and len(shown["predicted"]) == len(shown["probabilities"]) == 10
    assert shown["predicted"] == out.predicted[:10].tolist()


def test_predict_refuses_no_rows_and_parameters_of_another_model():
    model = Task.from_json(HEART).build_model()
    with pytest.raises(ValueError, match="no input rows"):
        predict(model, model.init(0), np.zeros((0, 2), np.float32))
    with pytest.raises(ValueError, match="parameters"):
        predict(model, np.zeros(3, np.float32), np.zeros((1, 2), np.float32))


def test_predicting_a_cnn_image_task_agrees_with_its_logits():
    task = BUILT_IN["digits"]
    model = task.build_model()
    params = model.init(0)
    pixels = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 1), dtype=np.uint8)
    x = task.images(pixels)
    np.testing.assert_allclose(predict(model, params, x).probabilities, softmax(model.logits(params, x)), rtol=1e-5, atol=1e-6)


def test_personalise_is_the_tasks_local_training_and_compares_both_models_on_the_holdout():
    task = Task.from_json(HEART)
    model = task.build_model()
    params = model.init(0)
    x, y = heart_rows(120)
    train, holdout = (x[:90], y[:90]), (x[90:], y[90:])
    before = params.copy()
    out = personalise(task, params, 4, train, holdout, seed=5)
    np.testing.assert_array_equal(params, before)  # the global model is untouched
    same = local_train(model, params, *train, task.training.config(5))
    np.testing.assert_array_equal(out.params, same.params)
    assert out.global_sums == evaluation_sums(model, params, *holdout, 2)
    assert out.personal_sums == evaluation_sums(model, same.params, *holdout, 2)
    summary = out.to_dict()
    assert summary["base_version"] == 4 and summary["holdout"] == 30
    assert summary["personal_accuracy"] > summary["global_accuracy"]  # a random init against 10 epochs on a separable rule
    with pytest.raises(ValueError, match="holdout"):
        personalise(task, params, 4, train, (x[:0], y[:0]), seed=5)


def test_a_browser_session_predicts_on_an_unlabelled_csv_by_header_and_ignores_a_label_column():
    params = Task.from_json(HEART).build_model().init(2)
    s = session_with_model(HEART, params)
    x, y = heart_rows(PREDICTIONS_SHOWN + 5)
    expected = predict(s.volunteer.task.build_model(), params, x)
    for text in (csv_of(x), csv_of(x, y, order=("age", "chol"))):
        out = json.loads(s.predict_csv(text))
        assert out["rows"] == PREDICTIONS_SHOWN + 5 and out["classes"] == ["no", "yes"]
        assert out["predicted"] == expected.predicted[:PREDICTIONS_SHOWN].tolist()
        np.testing.assert_allclose(out["probabilities"], expected.probabilities[:PREDICTIONS_SHOWN], atol=1e-4)
    with pytest.raises(ValueError, match=r"line 3, column 'age'"):
        s.predict_csv("age,chol\n50,200\nabc,210\n")
    with pytest.raises(ValueError, match="no column 'chol'"):
        s.predict_csv("age\n50\n")
    with pytest.raises(ValueError, match="personal model"):
        s.predict_csv(csv_of(x), "personal")


def test_without_a_model_there_is_nothing_to_predict_with():
    s = BrowserSession("test", HEART)
    with pytest.raises(ValueError, match="no model on this device"):
        s.predict_csv("age,chol\n1,2\n")
    assert json.loads(s.snapshot())["predictor"] is None


def test_the_kept_model_round_trips_and_a_wrong_one_is_refused():
    params = Task.from_json(HEART).build_model().init(2)
    s = session_with_model(HEART, params, version=7)
    record, raw = s.model_record(), s.model_bytes()
    assert json.loads(record)["version"] == 7
    offline = BrowserSession("test", HEART)  # no server reached this one
    other = {**HEART, "name": "other"}
    assert not offline.load_model(record, raw[:-4])  # truncated
    assert not offline.load_model(record, raw[:-4] + np.float32(1).tobytes())  # digest mismatch
    assert not offline.load_model("{not json", raw)
    assert not BrowserSession("test", other).load_model(record, raw)  # another task's
    assert offline.load_model(record, raw)
    assert json.loads(offline.snapshot())["predictor"] == {"version": 7, "kept": True}
    x, _ = heart_rows(5)
    assert json.loads(offline.predict_csv(csv_of(x))) == json.loads(s.predict_csv(csv_of(x)))


def test_the_kept_record_follows_a_new_definition_of_the_same_parameters():
    unscaled = {k: v for k, v in HEART.items() if k != "scaling"}
    s = session_with_model(unscaled, Task.from_json(unscaled).build_model().init(2))
    before = s.model_record()
    assert s.model_record() is before  # hashed once, not after every frame
    s.receive(encode(Message("definition", {"task": Task.from_json(HEART).to_dict()})))
    assert json.loads(s.model_record())["definition"]["scaling"] == HEART["scaling"]
    assert "scaling" not in json.loads(before)["definition"]


def test_a_browser_session_personalises_on_its_training_split_and_keeps_it_apart():
    params = Task.from_json(HEART).build_model().init(0)
    s = session_with_model(HEART, params)
    with pytest.raises(ValueError, match="no local data"):
        s.personalise()
    x, y = heart_rows(100)
    s.use_csv(csv_of(x, y), 2, 2, "mine.csv")
    summary = json.loads(s.personalise())
    (tx, ty), (hx, hy) = s.volunteer.local_split()
    assert summary["holdout"] == len(hy) == 20 and len(ty) == 80
    task = s.volunteer.task
    expected = personalise(task, params, 3, (tx, ty), (hx, hy), seed=s.volunteer.holdout_seed)
    assert summary == expected.to_dict()
    np.testing.assert_array_equal(s.volunteer.params, params)  # what training and updates use is the global model
    assert json.loads(s.snapshot())["personal"] == summary
    mine = json.loads(s.predict_csv(csv_of(x[:3]), "personal"))
    assert mine["predicted"] == predict(task.build_model(), expected.params, x[:3]).predicted.tolist()
    again = BrowserSession("test", HEART)
    assert again.load_personal(s.personal_record(), s.personal_bytes())
    assert json.loads(again.predict_csv(csv_of(x[:3]), "personal")) == mine
    assert not again.load_personal(s.personal_record(), s.personal_bytes()[4:])


def test_a_browser_session_trains_on_decoded_images_and_predicts_on_them():
    task = BUILT_IN["digits"]
    s = session_with_model(task.to_json(), task.build_model().init(0))
    pixels = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(10, dtype=np.uint8)
    frames = s.use_images(pixels.tobytes(), labels.tobytes(), "my-digits", ["broken.png"])
    assert s.data_source == {"kind": "images", "name": "my-digits", "examples": 10, "skipped": ["broken.png"]} and frames  # ready
    out = json.loads(s.predict_images(pixels[:2].tobytes(), 2))
    expected = predict(task.build_model(), s.volunteer.params, task.images(pixels[:2]))
    assert out["predicted"] == expected.predicted.tolist()
    with pytest.raises(ValueError, match="expected 2 images of 8x8x1"):
        s.predict_images(pixels[:2].tobytes()[:-1], 2)
    with pytest.raises(ValueError, match="class indices"):
        s.use_images(pixels[:1].tobytes(), bytes([10]))
    with pytest.raises(ValueError, match="does not take images"):
        session_with_model(HEART, Task.from_json(HEART).build_model().init(0)).predict_images(b"\0" * 64, 1)


def test_the_pages_offer_images_try_the_model_and_personalise_with_names_escaped(tmp_path):
    hostile = {
        "name": "pics", "title": "Pictures", "kind": "image", "width": 28, "height": 28, "channels": 1,
        "classes": ["<img src=x onerror=alert(1)>", "cat"], "model": {"type": "mlp", "hidden": []},
    }
    with TestClient(create_app(Settings(data_dir=tmp_path, admin_token=TOKEN))) as client:
        assert client.post("/api/tasks", json=hostile, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 201
        for page in (client.get("/t/pics").text, client.get("/embed?task=pics").text):
            assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
            assert 'data-testid="image-folder"' in page and "webkitdirectory" in page and 'data-testid="data-demo"' not in page
            assert 'data-testid="predict-file"' in page and 'data-testid="pad"' in page and 'data-testid="personalise"' in page
        mnist = client.get("/t/mnist").text  # demo data, and images and the pad too
        assert 'data-testid="data-demo"' in mnist and 'data-testid="pad"' in mnist
        assert client.post("/api/tasks", json=HEART, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 201
        tabular = client.get("/t/heart").text
        assert 'data-testid="predict-file"' in tabular and 'accept=".csv' in tabular
        assert 'data-testid="pad"' not in tabular and 'data-testid="image-folder"' not in tabular
