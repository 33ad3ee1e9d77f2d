"""``/api/config`` announces what the worker downloads, per stage, for the page's progress bar."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from webfl.build import paths
from webfl.server.app import create_app
from webfl.server.config import Settings

pytestmark = pytest.mark.skipif(not (paths.PYODIDE_DIR / "pyodide.asm.wasm").is_file(), reason="needs make setup")


def client(tmp_path, **settings) -> TestClient:
    return TestClient(create_app(Settings(data_dir=tmp_path, admin_token="t" * 32, model="softmax", **settings)))


def test_every_stage_names_its_files_with_the_bytes_a_gzip_browser_receives(tmp_path):
    with client(tmp_path) as c:
        config = c.get("/api/config").json()
        downloads = config["downloads"]
        assert set(downloads) == {"runtime", "numpy", "core", "kernel"}
        assert list(downloads["numpy"]) == [config["numpy"]["url"]] and list(downloads["core"]) == [config["core"]["url"]]
        assert len(downloads["runtime"]) == 5 and all(url.startswith(config["pyodide"]["index_url"]) for url in downloads["runtime"])
        for stage, files in downloads.items():
            for url, size in files.items():
                response = c.get(url, headers={"Accept-Encoding": "gzip"})
                # The body as sent (httpx decodes gzip, Content-Length is what came on the wire).
                assert response.status_code == 200 and int(response.headers["content-length"]) == size, (stage, url)
        assert sum(sum(files.values()) for files in downloads.values()) > 5_000_000  # Pyodide + NumPy


def test_a_runtime_served_elsewhere_has_no_sizes_of_ours(tmp_path):
    with client(tmp_path, pyodide_url="https://cdn.example/pyodide/") as c:
        downloads = c.get("/api/config").json()["downloads"]
        assert downloads["runtime"] is None and downloads["numpy"] is None and downloads["core"]
