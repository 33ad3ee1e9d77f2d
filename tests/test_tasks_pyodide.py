"""The task core inside Pyodide 0.27.7 (wasm32, NumPy 2.0.2) under Node, where volunteers run it.

wasm32 differs from the server: ``intp`` is 32 bits and NumPy is older, so the CNN, the
evaluation sums, the CSV parser and the standardised model run there once, on a core wheel
built from this tree, and must give what they give natively.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from webfl.build import paths
from webfl.build.bytecode import PyodideBytecode
from webfl.build.wheel import build_core_wheel
from webfl.core.stats import feature_stats, scaling_from_stats
from webfl.core.tasks import BUILT_IN
from webfl.core.training import TrainConfig, local_train

CODE = """
import importlib._bootstrap_external as external
compiled = []  # sources Python had to compile: none, the wheel carries their bytecode
to_code = external.SourceLoader.source_to_code
external.SourceLoader.source_to_code = lambda self, data, path, **kw: (compiled.append(path), to_code(self, data, path, **kw))[1]
import json, numpy as np
import webfl.core.browser
from webfl.core.tasks import BUILT_IN, Task
from webfl.core.training import TrainConfig, local_train
from webfl.core.stats import feature_stats, scaling_from_stats, fold
from webfl.core.evaluation import EvalSums, evaluation_sums, holdout_split
out = {"compiled": [path for path in compiled if "webfl" in path]}
task = Task.from_json(json.loads(json.dumps(BUILT_IN["digits"].to_json())))
model = task.build_model()
rng = np.random.default_rng(0)
x = task.images(rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8))
y = rng.integers(0, 10, 64)
p = model.init(0).astype(np.float64)
_, g = model.loss_and_grad(p, x[:4].astype(np.float64), y[:4])
idx = rng.choice(model.size, 20, replace=False)
num = []
for i in idx:
    e = np.zeros_like(p); e[i] = 1e-6
    num.append((model.loss_and_grad(p + e, x[:4], y[:4])[0] - model.loss_and_grad(p - e, x[:4], y[:4])[0]) / 2e-6)
out["cnn_grad_error"] = float(np.max(np.abs(np.array(num) - g[idx])))
trained = local_train(model, model.init(0), x, y, TrainConfig(epochs=1, batch_size=16, lr=0.1))
sums = evaluation_sums(model, trained.params, x, y, 10)
out["eval_round_trip"] = EvalSums.from_dict(json.loads(json.dumps(sums.to_dict())), 10) == sums
out["holdout"] = [len(part) for part in holdout_split(64, 0.2, 3)]
bc = BUILT_IN["breast-cancer"]
data = bc.parse_csv(open("/tmp/bc.csv", "rb").read())
mean, std = scaling_from_stats(feature_stats(data.x[:300]) + feature_stats(data.x[300:]))
scaled = bc.with_scaling(mean, std).build_model()
result = local_train(scaled, scaled.init(0), data.x, data.y, TrainConfig(epochs=5, batch_size=16, lr=0.1))
out["breast_cancer_params"] = result.params.tobytes().hex()
from webfl.core.predict import predict
out["predict_bc"] = predict(scaled, result.params, data.x[:50]).probabilities.tobytes().hex()
out["predict_cnn_sums"] = predict(model, trained.params, x).probabilities.sum(axis=1).tolist()
out["fold_error"] = float(np.abs(scaled.inner.logits(fold(scaled, result.params), data.x) - scaled.logits(result.params, data.x)).max())
for name, raw in [("binary", b"\\x89PNG\\r\\n\\x1a\\n\\x00"), ("bad_cell", open("/tmp/bc.csv").read().replace("0.2776", "abc", 1).encode())]:
    try:
        bc.parse_csv(raw)
    except ValueError as e:
        out[name] = str(e)
json.dumps(out)
"""

NODE = """
import { loadPyodide } from "%(pyodide)s/pyodide.mjs";
import { readFileSync } from "fs";
const py = await loadPyodide({ indexURL: "%(pyodide)s/" });
for (const wheel of %(wheels)s) {
  await py.loadPackage(wheel, { messageCallback: () => {}, errorCallback: (e) => { console.error(e); process.exit(2); } });
}
py.FS.writeFile("/tmp/bc.csv", readFileSync("%(csv)s"));
console.log(py.runPython(readFileSync(0, "utf8")));
"""


def test_task_core_runs_in_pyodide_as_natively(tmp_path: Path) -> None:
    node = shutil.which("node")
    numpy_wheels = sorted(paths.WHEELS_DIR.glob("numpy-*-pyodide_*_wasm32.whl"))
    if node is None or not numpy_wheels or not (paths.PYODIDE_DIR / "pyodide.mjs").is_file():
        pytest.skip("needs node, npm pyodide and the Pyodide NumPy wheel (make setup)")
    core = build_core_wheel(
        paths.PACKAGE_SRC_DIR, tmp_path, tmp_path / "core.json", bytecode=PyodideBytecode(paths.PYODIDE_DIR, paths.BYTECODE_CACHE)
    ).path
    script = tmp_path / "run.mjs"
    script.write_text(NODE % {
        "pyodide": paths.PYODIDE_DIR, "wheels": json.dumps([str(numpy_wheels[-1]), str(core)]),
        "csv": paths.BREAST_CANCER_CSV,
    })
    run = subprocess.run([node, str(script)], input=CODE, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])

    assert out["compiled"] == []  # every core module imported from its set-up bytecode
    assert out["cnn_grad_error"] < 1e-7
    assert out["eval_round_trip"] and out["holdout"] == [51, 13]
    assert out["fold_error"] < 1e-3
    assert out["binary"] == "not a text CSV: the file is not UTF-8 text"
    assert out["bad_cell"].startswith("line 2, column 'mean compactness' has 'abc'")
    # Same data, same seed: the volunteer's training gives the server's parameters, up to
    # float32 rounding (OpenBLAS and Pyodide's BLAS-less NumPy sum in different orders).
    task = BUILT_IN["breast-cancer"]
    data = task.parse_csv(paths.BREAST_CANCER_CSV.read_bytes())
    mean, std = scaling_from_stats(feature_stats(data.x[:300]) + feature_stats(data.x[300:]))
    scaled = task.with_scaling(mean, std).build_model()
    native = local_train(scaled, scaled.init(0), data.x, data.y, TrainConfig(epochs=5, batch_size=16, lr=0.1))
    pyodide = np.frombuffer(bytes.fromhex(out["breast_cancer_params"]), dtype=np.float32)
    assert scaled.evaluate(pyodide, data.x, data.y)[1] > 0.95
    np.testing.assert_allclose(pyodide, native.params, rtol=1e-4, atol=1e-5)
    # "Try the model" in the worker: the same probabilities as natively, from the same parameters.
    from webfl.core.predict import predict

    probs = np.frombuffer(bytes.fromhex(out["predict_bc"]), dtype=np.float32).reshape(50, 2)
    np.testing.assert_allclose(probs, predict(scaled, pyodide, data.x[:50]).probabilities, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["predict_cnn_sums"], 1, rtol=1e-5)
