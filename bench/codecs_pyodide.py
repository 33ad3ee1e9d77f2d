"""Codec encode/decode throughput inside Pyodide (headless Debian Chromium), in MB/s of float32.

Starts a ``webfl serve``, loads Pyodide with NumPy and the core wheel from it in a page
of its origin (the tests' ``run_in_pyodide``: the pages' CSP keeps WebAssembly in the
worker, so that page's context bypasses it), then times every codec on a 2NN-sized
delta. Prints a markdown table. Needs /usr/bin/chromium and Playwright.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "browser"))
from browser_helpers import run_in_pyodide  # noqa: E402
from servers import start_server  # noqa: E402

CODE = """
import time, numpy as np
from webfl.core.codecs import get_codec
n = 199210
x = np.random.default_rng(0).normal(0, 0.01, n).astype(np.float32)
rows = []
for spec in SPECS:
    c = get_codec(spec); rng = np.random.default_rng(1); enc = c.encode(x, rng)
    te, td = [], []
    for _ in range(5):
        t = time.perf_counter(); enc = c.encode(x, rng); te.append(time.perf_counter() - t)
        t = time.perf_counter(); c.decode(enc, n); td.append(time.perf_counter() - t)
    rows.append((spec, x.nbytes / 1e6 / float(np.median(te)), x.nbytes / 1e6 / float(np.median(td))))
repr(rows)
"""

def main() -> int:
    from playwright.sync_api import sync_playwright

    specs = ["fp16", "q8", "q4", "rot+q4", "q2", "rot+q2", "topk:0.05+fp16", "topk:0.01+q8", "topk:0.01"]
    with tempfile.TemporaryDirectory() as data:
        server = start_server(__import__("pathlib").Path(data))
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
                rows = eval(run_in_pyodide(browser, server.url, CODE.replace("SPECS", repr(specs))))
                browser.close()
        finally:
            server.stop()
    print("Pyodide 0.27.7 (NumPy 2.0.2, wasm32) in headless Chromium, same delta:\n")
    print("| codec | encode MB/s | decode MB/s |\n|---|---:|---:|")
    for spec, enc, dec in rows:
        print(f"| `{spec}` | {enc:.1f} | {dec:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
