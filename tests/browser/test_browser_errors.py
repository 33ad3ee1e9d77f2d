"""Assets that fail to load give a specific, human error on the page, not a stall."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from browser_helpers import wait_state

pytestmark = pytest.mark.browser


def _join_failing(context, serve, pattern: str, handler, *, page_only: bool = False) -> Page:
    """A fresh page that joins while requests matching ``pattern`` go to ``handler``, once it
    shows its error. The context's route also covers the workers' requests; ``page_only``
    routes the page's alone."""
    server = serve()
    page = context.new_page()
    (page if page_only else context).route(pattern, handler)
    page.goto(server.url)
    page.get_by_test_id("join").click()
    wait_state(page, "error")
    return page


def test_missing_numpy_wheel_is_named(context, serve):
    # The context routes the service worker's requests too (the worker's go through it): NumPy gets a 404.
    page = _join_failing(context, serve, "**/wheels/numpy-*.whl", lambda route: route.fulfill(status=404, body="not here"))
    expect(page.get_by_test_id("error")).to_have_text(
        "The NumPy wheel could not be loaded (HTTP 404 at /wheels/numpy-2.0.2-cp312-cp312-pyodide_2024_0_wasm32.whl)."
    )
    expect(page.get_by_test_id("pause")).to_be_disabled()


def test_a_tampered_core_wheel_never_runs(context, serve):
    def tampered(route):
        response = route.fetch()
        route.fulfill(response=response, body=response.body() + b"\0")

    page = _join_failing(context, serve, "**/wheels/webfl-*.whl", tampered)
    expect(page.get_by_test_id("error")).to_contain_text(
        "The webfl learning core wheel at /wheels/webfl-0.1.0-py3-none-any.whl is not the file the server announced"
    )


def test_missing_runtime_is_named(context, serve):
    page = _join_failing(context, serve, "**/pyodide.asm.wasm", lambda route: route.fulfill(status=404, body="not here"))
    expect(page.get_by_test_id("error")).to_contain_text("The Python runtime (Pyodide 0.27.7) could not be loaded (HTTP 404 at /pyodide/0.27.7/pyodide.asm.wasm)")


def test_version_mismatch_is_explained(context, serve):
    def older_server(route):
        response = route.fetch()
        config = response.json()
        config["version"] = "0.0.1"
        route.fulfill(response=response, json=config)

    # The worker asks for its task's: /api/config?task=
    page = _join_failing(context, serve, "**/api/config*", older_server, page_only=True)
    expect(page.get_by_test_id("error")).to_contain_text("learning core is version 0.1.0 but the server runs 0.0.1")


def test_a_bad_csv_is_explained_as_soon_as_it_is_picked(context, serve, tmp_path):
    server = serve()
    bad = tmp_path / "digits.csv"
    bad.write_text("label,a,b\n3,0.5,0.5\n")
    page = context.new_page()
    page.goto(server.url)
    page.get_by_test_id("data-csv").check()
    page.get_by_test_id("csv-file").set_input_files(str(bad))
    # Before any runtime is loaded: no worker exists yet.
    expect(page.get_by_test_id("csv-problem")).to_have_text(
        "Your file “digits.csv” cannot be used: each row needs a label and 784 features, got 3 columns."
    )
    expect(page.get_by_test_id("join")).to_be_disabled()
    assert page.workers == []
    good = tmp_path / "fixed.csv"
    good.write_text("3," + ",".join(["0"] * 784) + "\n")
    page.get_by_test_id("csv-file").set_input_files(str(good))
    expect(page.get_by_test_id("csv-problem")).to_be_hidden()
    expect(page.get_by_test_id("join")).to_be_enabled()
    assert server.status()["connected"] == 0


def test_a_csv_that_only_the_full_check_refuses_is_explained_and_never_joins(context, serve, tmp_path):
    server = serve()
    bad = tmp_path / "digits.csv"
    bad.write_text("12," + ",".join(["0"] * 784) + "\n")  # the right shape, a label out of range
    page = context.new_page()
    page.goto(server.url)
    page.get_by_test_id("data-csv").check()
    page.get_by_test_id("csv-file").set_input_files(str(bad))
    expect(page.get_by_test_id("csv-problem")).to_be_hidden()
    page.get_by_test_id("join").click()
    wait_state(page, "error")
    expect(page.get_by_test_id("error")).to_have_text("Your file “digits.csv” cannot be used: row 1: label must be an integer in 0..9")
    assert server.status()["connected"] == 0


def test_a_missing_worker_module_is_named(context, serve):
    # Imported while Pyodide loads (worker.js): its failure is a sentence, not a stalled load.
    page = _join_failing(context, serve, "**/static/worker/secagg.js", lambda route: route.fulfill(status=404, body="not here"))
    expect(page.get_by_test_id("error")).to_have_text(
        "A part of the training worker (/static/worker/secagg.js) could not be loaded (HTTP 404 at /static/worker/secagg.js). Reload the page."
    )
    expect(page.get_by_test_id("pause")).to_be_disabled()
