"""DP in Chromium: the core wheel's volunteer clips in Pyodide as it does natively (driven
frame by frame), and a dp run through the real page, worker and engine: the worker clips
to the task's clip and the page states the run's guarantee in plain words.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from playwright.sync_api import expect

from browser_helpers import join

pytestmark = pytest.mark.browser

# Run as is in Pyodide and natively; the last expression is the result.
CODE = """
import json, numpy as np
from webfl import __version__
from webfl.core.data import Dataset
from webfl.core.protocol import Message, decode, encode
from webfl.core.tasks import get_task
from webfl.core.volunteer import Volunteer

task = get_task("mnist", "softmax")
rng = np.random.default_rng(0)
data = Dataset(rng.integers(0, 256, (64, 784), dtype=np.uint8), rng.integers(0, 10, 64, dtype=np.uint8))
frame = lambda kind, arrays=(), **fields: encode(Message(kind, fields, arrays))
v = Volunteer(data, agent="test")
v.hello()
v.receive(frame("welcome", version=__version__, volunteer="v1", task=task.to_dict(), shard=None))
v.receive(frame("model", (task.build_model().init(0),), model_version=0, codec="none", codec_params={}))
out = []
for clip in CLIPS:
    config = {"epochs": 1, "batch_size": 16, "lr": 0.1, "seed": 3}
    v.receive(frame("task", round=1, model_version=0, deadline_s=30.0, config=config, codec="none", token="t", clip=clip))
    update = decode(v.train())
    v.receive(frame("accept", round=1))
    out.append({"clipped": update["clipped"], "delta": update.arrays[0].tolist()})
json.dumps(out)
"""

JS = """async ([code]) => {
  const config = await (await fetch("/api/config")).json();
  const base = new URL(config.pyodide.index_url, location.href).href;
  const { loadPyodide } = await import(base + "pyodide.mjs");
  const py = await loadPyodide({ indexURL: base });
  await py.loadPackage(config.numpy.url ? new URL(config.numpy.url, location.href).href : config.numpy.name);
  await py.loadPackage(new URL(config.core.url, location.href).href);
  return py.runPython(code);
}"""


def run(code: str) -> list[dict]:
    scope: dict = {}
    *body, last = code.strip().splitlines()
    exec("\n".join(body), scope)
    return json.loads(eval(last, scope))


def test_pyodide_volunteer_clips_its_delta_like_the_native_core(context, serve):
    server = serve()
    # The unclipped delta's norm, natively, to pick one clip below it and one above.
    (free,) = run(CODE.replace("CLIPS", "[1e9]"))
    norm = float(np.linalg.norm(np.array(free["delta"], dtype=np.float64)))
    clips = [norm / 5, norm * 2]
    code = CODE.replace("CLIPS", repr(clips))
    page = context.new_page()
    # A blank page of the server's origin: the real pages' CSP lets only the worker compile
    # WebAssembly, and here the test itself is the worker.
    blank = server.url + "/__privacy_test__"
    page.route(blank, lambda route: route.fulfill(body="<!doctype html><title>dp</title>", content_type="text/html"))
    page.goto(blank)
    page.set_default_timeout(120_000)
    browser_out = json.loads(page.evaluate(JS, [code]))
    native_out = run(code)
    for clip, got, want in zip(clips, browser_out, native_out):
        d = np.array(got["delta"], dtype=np.float32)
        assert got["clipped"] is want["clipped"] is (norm > clip)
        assert np.linalg.norm(d.astype(np.float64)) <= clip * (1 + 1e-6)
        # NumPy without BLAS (Pyodide) and with it (natively) round differently, no more.
        np.testing.assert_allclose(d, np.array(want["delta"], dtype=np.float32), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.array(browser_out[0]["delta"]) * 5, np.array(free["delta"]), rtol=1e-3, atol=1e-6)


def test_the_volunteer_page_states_the_runs_guarantee_and_the_worker_clips(context, serve):
    server = serve()
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    join(page, server.url)
    expect(page.get_by_test_id("privacy")).to_have_text("")  # no run: nothing to state
    # A clip far below any trained delta's norm: every update must arrive clipped.
    dp = {"noise_multiplier": 1.0, "clip": 0.001}
    code, body = server.api("POST", "/api/rounds", {"rounds": 2, "clients_per_round": 1, "local_epochs": 1, "deadline_s": 60, "dp": dp})
    assert code == 202, body
    expect(page.locator("body")).to_have_attribute("data-run", "finished", timeout=90_000)
    status = server.status()
    epsilon = status["run"]["privacy"]["epsilon"]
    assert [h["privacy"]["clipped_fraction"] for h in status["history"]] == [1.0, 1.0]
    # The worker reported clipping and clipped within the codec's tolerance: nothing over it.
    assert all(h["privacy"]["verdicts"]["excess"] == 0 for h in status["history"])
    text = page.get_by_test_id("privacy")
    expect(text).to_have_text(re.compile(
        r"^This run so far: ε = [0-9.]+, δ = 1e-5; your update each round is clipped to a norm of 0\.001 and noise is added\.$"))
    shown = float(re.search(r"ε = ([0-9.]+)", text.text_content()).group(1))
    assert shown == pytest.approx(epsilon, rel=0.05)
    # A run without dp says so.
    code, body = server.api("POST", "/api/rounds", {"rounds": 1, "clients_per_round": 1, "local_epochs": 1, "deadline_s": 60})
    assert code == 202, body
    expect(text).to_have_text("Updates in this run are not differentially private.", timeout=90_000)
    assert problems == []
