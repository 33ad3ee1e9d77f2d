"""Issue 16 item 2 through the real server: a finite but huge update (±1e30 per
coordinate) must not desynchronise the live model from the store. The commit is refused
before anything is applied; volunteers, the store and a fresh volunteer agree throughout."""

from pathlib import Path

import numpy as np
import pytest
from test_server import MODEL_SIZE, Client, global_params

from servers import start_server
from webfl.server.store import Store


@pytest.fixture
def server(tmp_path, store_target):
    """A real server on each store backend; ``server.store_target`` says where its store is."""
    on_postgres = not isinstance(store_target, Path)
    proc = start_server(tmp_path / "data", *(("--database", store_target.url) if on_postgres else ()))
    proc.store_target = store_target if on_postgres else proc.data_dir / "webfl.sqlite3"
    yield proc
    proc.stop()


def stored_model(server) -> tuple[int, np.ndarray]:
    store = Store(server.store_target)
    try:
        return store.scoped("mnist", "2nn").latest_checkpoint()
    finally:
        store.close()


def test_a_huge_update_is_refused_and_the_live_model_stays_the_stored_one(server):
    a = Client(server)
    a.join()
    before = global_params(server)
    assert server.api("POST", "/api/rounds", {"rounds": 1, "clients_per_round": 1, "deadline_s": 30})[0] == 202
    task = a.recv("task")
    huge = np.where(np.arange(MODEL_SIZE) % 2, 1e30, -1e30)
    assert a.update(task, huge).type == "accept"  # finite: nothing refuses it on arrival
    server.wait_for(lambda s: "round 1 refused" in server.log(), timeout=30, what="the commit to be refused")
    status = server.status()
    assert status["history"] == [] and status["model_version"] == 0 and status["run"]["running"]
    np.testing.assert_array_equal(global_params(server), before)
    assert stored_model(server)[0] == 0
    np.testing.assert_array_equal(stored_model(server)[1], before)
    fresh = Client(server)
    _, model = fresh.join()  # a fresh volunteer holds what the store holds
    assert model["model_version"] == 0
    np.testing.assert_array_equal(model.arrays[0], before)
    fresh.ws.close()  # not a candidate for the retry
    server.wait_for(lambda s: s["connected"] == 1, timeout=10, what="the fresh volunteer to go")

    # The round is retried; an honest update commits, and everyone agrees on version 1.
    a.send("ready", num_examples=100)
    retry = a.recv("task")
    assert retry["round"] == 1
    delta = np.random.default_rng(0).normal(0, 0.01, MODEL_SIZE)
    assert a.update(retry, delta).type == "accept"
    # Committed: every volunteer hears of version 1 (the model itself comes with a task).
    notice = a.recv("model_notice")
    assert notice["model_version"] == 1 and notice["url"].endswith(notice["digest"] + ".bin")
    status = server.wait_for(lambda s: not s["run"]["running"], timeout=30, what="the run to complete")
    assert [h["round"] for h in status["history"]] == [1] and np.isfinite(status["history"][0]["loss"])
    version, stored = stored_model(server)
    _, model = Client(server).join()
    assert version == model["model_version"] == 1
    np.testing.assert_array_equal(model.arrays[0], stored)
    np.testing.assert_array_equal(global_params(server), stored)
    np.testing.assert_allclose(stored, before + delta.astype(np.float32), atol=1e-6)
