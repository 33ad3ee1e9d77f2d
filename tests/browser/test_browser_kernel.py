"""The volunteer's device in Chromium: the WebAssembly kernel, pausing within a batch, CPU use."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from browser_helpers import join, wait_state

pytestmark = pytest.mark.browser


def worker(page):
    return next(w for w in page.workers if w.url.endswith("/worker.js"))


def test_the_kernel_runs_on_pyodides_heap_and_agrees_with_numpy(context, serve):
    server = serve()
    page = context.new_page()
    join(page, server.url)
    expect(page.get_by_test_id("compute")).to_have_text("WebAssembly SIMD kernel")
    result = worker(page).evaluate(
        """() => {
            const out = self.pyodide.runPython(`
import json, numpy as np
from webfl.core import kernels
from webfl.core.tasks import get_task
from webfl.core.training import TrainConfig, local_train
active = kernels.active()
rng = np.random.default_rng(4)
model = get_task("mnist", "2nn").build_model()
x, y = rng.random((70, 784), dtype=np.float32), rng.integers(0, 10, 70)
config = TrainConfig(epochs=2, batch_size=10, lr=0.1, seed=1)
# Mostly zero rows, as MNIST's: the kernel's sparse path.
x *= rng.random(x.shape) < 0.2
w_np = local_train(model, model.init(0), x, y, config, kernels=kernels.NumpyKernels()).params
w_k = local_train(model, model.init(0), x, y, config, kernels=active).params
cnn = get_task("digits").build_model()
xc, yc = rng.random((40, 64), dtype=np.float32), rng.integers(0, 10, 40)
p = cnn.init(0)
loss_np, g_np = cnn.loss_and_grad(p, xc[:16], yc[:16], kernels.NumpyKernels())
loss_k, g_k = cnn.loss_and_grad(p, xc[:16], yc[:16], active)
cnn_np = local_train(cnn, p, xc, yc, config, kernels=kernels.NumpyKernels()).params
cnn_k = local_train(cnn, p, xc, yc, config, kernels=active).params
json.dumps({"name": active.name, "gemm": kernels.self_check(active, seed=9),
            "train": float(np.linalg.norm(w_k - w_np) / np.linalg.norm(w_np)),
            "cnn_loss": abs(loss_k - loss_np) / loss_np, "cnn_grad": float(np.linalg.norm(g_k - g_np) / np.linalg.norm(g_np)),
            "cnn_train": float(np.linalg.norm(cnn_k - cnn_np) / np.linalg.norm(cnn_np))})
`);
            return JSON.parse(out);
        }"""
    )
    assert result["name"] == "wasm-simd128"
    assert result["gemm"] <= 1e-6, result
    # Two epochs of SGD compound rounding differences; still far below anything visible.
    assert result["train"] <= 1e-5, result
    # The CNN's im2col products through the same kernel: one gradient to 1e-6, training to 1e-5.
    assert result["cnn_loss"] <= 1e-6 and result["cnn_grad"] <= 1e-6, result
    assert result["cnn_train"] <= 1e-5, result


def start_long_round(server, **settings) -> None:
    config = {"rounds": 1, "clients_per_round": 1, "min_updates": 1, "local_epochs": 30, "batch_size": 10,
              "lr": 0.05, "deadline_s": 300, "select_timeout_s": 10, **settings}
    code, body = server.api("POST", "/api/rounds", config)
    assert code == 202, body


def batches_done(page) -> int:
    return int(page.get_by_test_id("train-progress").get_attribute("data-done") or 0)


def test_a_pause_lands_within_one_batch_and_training_carries_on_after_resume(context, serve):
    server = serve()
    page = context.new_page()
    join(page, server.url)
    start_long_round(server)
    wait_state(page, "training")
    page.wait_for_function("() => Number(document.querySelector('[data-testid=train-progress]').dataset.done) >= 20")
    progress = page.get_by_test_id("train-progress")
    page.get_by_test_id("pause").click()
    expect(progress).to_have_attribute("data-held-after", re.compile(r"^\d+$"))
    # Batches the worker finished between the click's message and standing still.
    assert int(progress.get_attribute("data-held-after")) <= 1
    expect(page.get_by_test_id("train-label")).to_contain_text("paused")
    held = {"done": batches_done(page)}
    page.wait_for_timeout(1500)
    assert batches_done(page) == held["done"]  # nothing ran while paused
    assert server.status()["history"] == []
    page.get_by_test_id("pause").click()  # resume
    server.wait_for(lambda s: len(s["history"]) == 1, timeout=180, what="the round to commit after resuming")
    assert batches_done(page) > held["done"]


def busy_share(page, server, level: str) -> float:
    page.get_by_test_id("cpu-level").select_option(level)
    before = len(server.status()["history"])
    start_long_round(server, local_epochs=4)
    server.wait_for(lambda s: len(s["history"]) == before + 1, timeout=240, what=f"a round at cpu {level}")
    page.wait_for_function("() => document.querySelector('[data-testid=cpu-use]').dataset.share !== undefined")
    share = float(page.get_by_test_id("cpu-use").get_attribute("data-share"))
    page.evaluate("() => delete document.querySelector('[data-testid=cpu-use]').dataset.share")
    return share


def test_the_light_setting_cuts_the_workers_busy_time(context, serve):
    server = serve()
    page = context.new_page()
    join(page, server.url)
    full = busy_share(page, server, "full")
    light = busy_share(page, server, "light")
    print(f"busy share: full {full:.2f}, light {light:.2f}")
    # Light rests three times each batch's compute: about a quarter of full's share.
    assert light / full < 0.5, (light, full)
    assert full > 0.5, full
