"""'Use my own data': a CSV, or a folder of images, trains a round and its bytes never leave the browser."""

from __future__ import annotations

import io
import json
import struct
import urllib.request
import zlib

import numpy as np
import pytest
from playwright.sync_api import expect

from browser_helpers import wait_state
from servers import TOKEN
from webfl.build.paths import DIGITS_NPZ, MNIST_NPZ
from webfl.core.data import load_npz
from webfl.core.predict import predict
from webfl.core.tasks import BUILT_IN

pytestmark = pytest.mark.browser

ROWS = 300


def test_own_csv_trains_and_never_leaves_the_browser(context, serve, tmp_path):
    server = serve()
    test = load_npz(MNIST_NPZ, "test")
    x, y = test.x[:ROWS], test.y[:ROWS]
    lines = ["label," + ",".join(f"px{i}" for i in range(x.shape[1]))]
    lines += [f"{label}," + ",".join(map(str, row)) for label, row in zip(y, x)]
    csv_text = "\n".join(lines) + "\n"
    csv_path = tmp_path / "my-digits.csv"
    csv_path.write_text(csv_text)

    sent_http: list[tuple[str, bytes]] = []
    sent_ws: list[bytes] = []
    context.on("request", lambda request: sent_http.append((request.url, request.post_data_buffer or b"")))

    def on_socket(ws) -> None:
        ws.on("framesent", lambda payload: sent_ws.append(payload if isinstance(payload, bytes) else payload.encode()))

    page = context.new_page()
    page.on("websocket", on_socket)
    page.goto(server.url)
    page.get_by_test_id("data-csv").check()
    page.get_by_test_id("csv-file").set_input_files(str(csv_path))
    page.get_by_test_id("join").click()
    wait_state(page, "idle")
    expect(page.get_by_test_id("data-source")).to_have_text(f"your file my-digits.csv ({ROWS} examples, kept in this tab)")
    server.wait_for(lambda s: s["volunteers"]["ready"] == 1, timeout=30, what="the volunteer ready")

    code, body = server.api("POST", "/api/rounds", {"rounds": 1, "clients_per_round": 1, "local_epochs": 1, "deadline_s": 60})
    assert code == 202, body
    expect(page.get_by_test_id("rounds-done")).to_have_text("1", timeout=60_000)
    # A volunteer's round counts once its update is accepted; the commit follows.
    history = server.wait_for(lambda s: len(s["history"]) == 1, timeout=30, what="the round committed")["history"]
    assert history[0]["participants"] == 1

    # Nothing the browser sent holds the file: not its text, not a row's pixels as
    # bytes, not as the float32 features the model trains on.
    needles = [csv_text[:64].encode(), lines[1].encode(), lines[1][:40].encode(), x[0].tobytes(), (x[0].astype(np.float32) / 255).tobytes()]
    # The recording sees the worker's own traffic (its config fetch, its socket).
    assert any("/api/config?task=mnist" in url for url, _ in sent_http) and sent_ws, "nothing was recorded"
    for url, body in sent_http:
        assert not any(n in url.encode() or n in body for n in needles), url
        assert len(body) < 1000, f"unexpected upload of {len(body)} bytes to {url}"
    for frame in sent_ws:
        assert not any(n in frame for n in needles)
    # WebSocket frames out: hello, ready, then one update per round whose size is fixed
    # by the model (its parameters as float32), whatever the data.
    sizes = sorted(len(f) for f in sent_ws)
    updates = [s for s in sizes if s > 10_000]
    assert len(updates) == 1 and len(sizes) - len(updates) <= 4, sizes
    assert updates[0] == pytest.approx(4 * model_size(), abs=2048)


def model_size() -> int:
    from webfl.core.tasks import get_task

    return get_task("mnist", "2nn").build_model().size


def png(gray: np.ndarray) -> bytes:
    """A grayscale PNG of a 2-D uint8 array (zlib and crc32 are all PNG needs; no Pillow)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    h, w = gray.shape
    raw = b"".join(b"\0" + row.tobytes() for row in gray)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


PER_CLASS = 6


def test_an_image_task_trains_from_a_folder_whose_images_never_leave_the_browser(context, serve, tmp_path):
    task = BUILT_IN["digits"]  # its CNN
    (tmp_path / "digits.json").write_text(json.dumps(task.to_json()))
    server = serve("--task-file", str(tmp_path / "digits.json"))
    data = load_npz(DIGITS_NPZ, "train")
    x, y = data.x, data.y
    picked = np.concatenate([np.flatnonzero(y == label)[:PER_CLASS] for label in range(10)])
    folder = tmp_path / "my-digits"
    for i in picked:
        (folder / str(y[i])).mkdir(parents=True, exist_ok=True)
        # Pixels in 0..16 stretched to 0..255, as a photo of a digit would be.
        (folder / str(y[i]) / f"d{i}.png").write_bytes(png((x[i].reshape(8, 8).astype(np.uint16) * 255 // 16).astype(np.uint8)))
    (folder / "3" / "broken.png").write_bytes(b"not an image at all")
    (folder / "notes.txt").write_text("beside the class folders")
    wrong = tmp_path / "wrong"
    (wrong / "seven").mkdir(parents=True)
    (wrong / "seven" / "a.png").write_bytes(png(np.zeros((8, 8), np.uint8)))

    sent_http: list[tuple[str, bytes]] = []
    sent_ws: list[bytes] = []
    context.on("request", lambda request: sent_http.append((request.url, request.post_data_buffer or b"")))
    page = context.new_page()
    page.on("websocket", lambda ws: ws.on("framesent", lambda p: sent_ws.append(p if isinstance(p, bytes) else p.encode())))
    page.goto(f"{server.url}/t/digits")
    page.get_by_test_id("data-images").check()
    page.get_by_test_id("image-folder").set_input_files(str(wrong))
    expect(page.get_by_test_id("images-problem")).to_contain_text("the folder “seven” is not one of the classes (0, 1, 2, 3, 4, …)")
    expect(page.get_by_test_id("join")).to_be_disabled()
    two = sorted((folder / "4").glob("*.png"))[:2]
    page.get_by_test_id("image-label").select_option("4")
    page.get_by_test_id("image-files").set_input_files([str(f) for f in two])  # files of one class
    expect(page.get_by_test_id("images-chosen")).to_have_text("2 images chosen")
    expect(page.get_by_test_id("join")).to_be_enabled()
    page.get_by_test_id("image-folder").set_input_files(str(folder))
    expect(page.get_by_test_id("images-chosen")).to_have_text(f"{10 * PER_CLASS + 1} images chosen; skipped (not in a class folder): notes.txt")
    page.get_by_test_id("join").click()
    wait_state(page, "idle")
    expect(page.get_by_test_id("data-source")).to_have_text(
        f"your images my-digits ({10 * PER_CLASS} examples, kept in this tab; skipped, not readable as images: broken.png)"
    )

    # Try the model on two of the files: the same predictions as the model run natively.
    files = [folder / str(y[i]) / f"d{i}.png" for i in picked[:2]]
    page.get_by_test_id("predict-file").set_input_files([str(f) for f in files])
    rows = page.get_by_test_id("predictions").locator("tbody tr")
    expect(rows).to_have_count(2)
    pixels = np.stack([(x[i].reshape(8, 8, 1).astype(np.uint16) * 255 // 16).astype(np.uint8) for i in picked[:2]])
    native = predict(task.build_model(), global_params(server, "digits"), task.images(pixels))
    for row, path, k in zip(rows.all(), files, native.predicted):
        assert row.locator("th, td").all_text_contents()[:2] == [path.name, task.classes[k]]

    code, body = server.api("POST", "/api/tasks/digits/rounds", {"rounds": 1, "clients_per_round": 1, "local_epochs": 1, "deadline_s": 60})
    assert code == 202, body
    expect(page.get_by_test_id("rounds-done")).to_have_text("1", timeout=60_000)

    # No image byte left the tab: not a file, not its pixels, not the model's float inputs.
    first = files[0].read_bytes()
    needles = [first[33:], pixels[0].tobytes(), (pixels[0].astype(np.float32) / 255).tobytes()]
    assert sent_ws and any("/api/config?task=digits" in url for url, _ in sent_http), "nothing was recorded"
    for url, body in sent_http:
        assert not any(n in url.encode() or n in body for n in needles), url
        assert len(body) < 1000, f"unexpected upload of {len(body)} bytes to {url}"
    for frame in sent_ws:
        assert not any(n in frame for n in needles)
    assert max(len(f) for f in sent_ws) == pytest.approx(4 * task.build_model().size, abs=2048)


def global_params(server, task: str) -> np.ndarray:
    req = urllib.request.Request(f"{server.url}/api/tasks/{task}/model", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as resp, np.load(io.BytesIO(resp.read()), allow_pickle=False) as f:
        return f["params"]
