"""Image folders for the simulator: one sub-folder per class, PNG and JPEG decoded, resized
and converted to the task's channels; a bad folder is a clear error; and a real server
trains an image task from a folder over real sockets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from servers import TOKEN, start_server
from webfl.core.data import load_image_folder
from webfl.core.tasks import Task
from webfl.simulate import local_data

SHAPES = {
    "name": "shades", "title": "Dark or light", "kind": "image", "width": 8, "height": 8, "channels": 1,
    "classes": ["dark", "light"], "model": {"type": "mlp", "hidden": []}, "training": {"epochs": 5, "batch_size": 8, "lr": 0.5},
}


def _folder(root, n: int = 3, seed: int = 0):
    """``dark`` and ``light`` images of assorted sizes, modes and formats, plus a stray note."""
    rng = np.random.default_rng(seed)
    for name, lo, hi in (("dark", 0, 60), ("light", 190, 255)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            size = (int(rng.integers(8, 40)), int(rng.integers(8, 40)))
            values = rng.integers(lo, hi, (size[1], size[0], 3), dtype=np.uint8)
            image = Image.fromarray(values, "RGB")
            if i % 3 == 0:
                image.save(root / name / f"{i}.png")
            elif i % 3 == 1:
                image.convert("RGBA").save(root / name / f"{i}.PNG")
            else:
                image.save(root / name / f"{i}.jpg", quality=95)
    (root / "dark" / "notes.txt").write_text("not an image")
    return root


def test_a_folder_is_decoded_resized_and_labelled_by_its_sub_folders(tmp_path):
    root = tmp_path / "images"
    (root / "light").mkdir(parents=True)
    (root / "dark").mkdir()
    Image.new("RGB", (30, 20), (255, 0, 0)).save(root / "light" / "red.png")  # RGB -> gray: 76 (ITU-R 601)
    Image.new("L", (4, 4), 200).save(root / "light" / "gray.jpg", quality=100)
    Image.new("L", (8, 8), 10).save(root / "dark" / "a.png")
    (root / "dark" / ".DS_Store").write_bytes(b"\x00\x01")
    pixels, labels = load_image_folder(root, (8, 8, 1), ["dark", "light"])
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 8, 8, 1)
    assert labels.tolist() == [0, 1, 1]  # class order, then file names: dark/a, light/gray, light/red
    assert (pixels[0] == 10).all() and np.abs(pixels[1].astype(int) - 200).max() <= 1 and (pixels[2] == 76).all()
    rgb, _ = load_image_folder(root, (5, 6, 3), ["dark", "light"])  # height 5, width 6
    assert rgb.shape == (3, 5, 6, 3) and rgb[2].reshape(-1, 3).tolist() == [[255, 0, 0]] * 30
    # A class without a sub-folder has no examples here; that is allowed.
    only, labels = load_image_folder(root, (8, 8, 1), ["dark", "light", "medium"])
    assert len(only) == 3 and set(labels.tolist()) == {0, 1}


def test_a_bad_folder_is_a_clear_error(tmp_path):
    root = _folder(tmp_path / "images", n=1)
    classes = ["dark", "light"]
    with pytest.raises(ValueError, match=r"sub-folder 'light' is not a class of the task \(dark, bright\)"):
        load_image_folder(root, (8, 8, 1), ["dark", "bright"])
    (root / "light" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ValueError, match=r"broken\.png: not a PNG or JPEG image that decodes"):
        load_image_folder(root, (8, 8, 1), classes)
    empty = tmp_path / "empty"
    (empty / "dark").mkdir(parents=True)
    with pytest.raises(ValueError, match="no .png, .jpg, .jpeg images in sub-folders named as the classes"):
        load_image_folder(empty, (8, 8, 1), classes)
    with pytest.raises(ValueError, match="not a folder"):
        load_image_folder(tmp_path / "missing", (8, 8, 1), classes)
    # The simulator's --data: a folder for an image task, a CSV for a tabular one.
    image_task = Task.from_json(SHAPES)
    tabular = Task.from_json({"name": "t", "title": "T", "kind": "tabular", "features": ["a"], "label": "y",
                              "classes": ["n", "p"], "model": {"type": "mlp", "hidden": []}})
    (tmp_path / "rows.csv").write_text("a,y\n1,n\n")
    with pytest.raises(ValueError, match="is an image task: --data takes a folder"):
        local_data(image_task, tmp_path / "rows.csv")
    with pytest.raises(ValueError, match="is a tabular task: --data takes a CSV file, not a folder"):
        local_data(tabular, empty)
    with pytest.raises(ValueError, match="missing.csv"):
        local_data(tabular, tmp_path / "missing.csv")


def test_the_simulator_trains_an_image_task_from_a_folder_on_a_real_server(tmp_path):
    root = _folder(tmp_path / "images", n=40, seed=1)
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps(SHAPES))
    server = start_server(tmp_path / "data", "--task-file", str(tasks))
    env = {**os.environ, "WEBFL_ADMIN_TOKEN": TOKEN}
    base = [sys.executable, "-m", "webfl.cli", "simulate", "--server", server.url, "--task", "shades", "--timeout-s", "120"]
    try:
        bad = subprocess.run([*base, "--data", str(tmp_path / "tasks.json")], capture_output=True, text=True, env=env, timeout=60)
        assert bad.returncode == 2 and "shades is an image task: --data takes a folder" in bad.stderr and "Traceback" not in bad.stderr
        done = subprocess.run([*base, "--data", str(root), "--clients", "3", "--rounds", "2", "--clients-per-round", "2",
                               "--partition", "dirichlet:1.0"], capture_output=True, text=True, env=env, timeout=180)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        rounds = server.api("GET", "/api/tasks/shades/history")[1]["rounds"]
        assert [r["round"] for r in rounds] == [1, 2]
        assert all(r["eval_source"] == "federated" and r["eval_examples"] > 0 for r in rounds)
        # Dark against light: the decoded pixels carry the class (chance is 0.5).
        assert rounds[-1]["accuracy"] > 0.8 and len(rounds[-1]["class_accuracy"]) == 2, rounds[-1]
    finally:
        server.stop()
