"""The volunteer page in Debian's Chromium: start-up, bytes, training speed, page responsiveness.

    python3 bench/browser.py [--repeat 3] [--startup-only]

Runs a real ``webfl serve`` on a free loopback port and measures:

- time from the consent click until Pyodide + NumPy + the core are ready (the worker
  reports the "Connecting" stage), with a fresh profile (cold), again in the same
  profile (warm: HTTP cache, the service worker's cache and V8's compiled-wasm cache),
  and once more after clearing the HTTP cache (the service worker's cache only);
- bytes the browser downloads for it (response bodies as sent), served gzip-compressed
  and served plain (requests sent with ``Accept-Encoding: identity``);
- webfl's start-up against a bare page that only loads Pyodide + NumPy from the same
  server, cold (fresh context) and warm (same context again), interleaved and best of
  ``--repeat``: the baseline for what webfl adds. Both are timed by the pages' own marks
  (the click's handler to the worker's ready), so that Playwright's click and polling,
  which only webfl's side goes through, stay out of the ratio (printed too);
- one local epoch of the 2NN on a 600-example shard at batch 10 and 32 in the page's
  Pyodide worker, with the WebAssembly kernel and with NumPy alone (the in-run baseline),
  vs the same code in native CPython on this machine (one BLAS thread, since Pyodide has
  one), as ratios; the same for the digits task's CNN (im2col, batch 16);
- main-thread long tasks (PerformanceObserver "longtask", > 50 ms) while the tab trains.

Prints a markdown table, a per-step breakdown of the best start-up of each page (the
``webfl:STEP`` measures of ``web/static/worker/timing.js``), then ``pyodide/native epoch
ratio: B=10 X.XX, B=32 Y.YY`` (with the kernel). ``--startup-only`` measures start-up
alone (no epochs, no long tasks). Needs ``make setup`` (the wheels, node_modules, /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))  # the working tree's webfl

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
TOKEN = "bench-token"
SHARD = 600

# The same code runs in Pyodide and natively: one epoch of local_train on SHARD examples
# of a task (MNIST's 2NN, or the digits task's CNN).
EPOCH_CODE = """
import time, numpy as np
from webfl.core import kernels
from webfl.core.data import load_npz, features
from webfl.core.tasks import get_task
from webfl.core.training import TrainConfig, local_train
def epoch_times(npz, repeat, batch_size, backend, task="mnist", model_name="2nn"):
    import io
    with np.load(io.BytesIO(npz)) as f:
        x, y = features(f["x"][:{shard}]), f["y"][:{shard}]
    model = get_task(task, model_name).build_model()
    params = model.init(0)
    config = TrainConfig(epochs=1, batch_size=batch_size, lr=0.1, seed=0)
    k = kernels.NumpyKernels() if backend == "numpy" else kernels.active()
    local_train(model, params, x, y, config, kernels=k)  # warm-up
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        local_train(model, params, x, y, config, kernels=k)
        out.append(time.perf_counter() - t)
    return {"backend": k.name, "times": out}
""".replace("{shard}", str(SHARD))

BATCHES = (10, 32)
#: The digits task's CNN (8x8 images, conv 16-32, dense 64) at its own batch size: the
#: im2col products through the same kernel.
CNN_TASK, CNN_BATCH = "digits", 16


def digits_npz() -> bytes:
    """SHARD of the digits task's training images, as the MNIST shards are laid out (x, y)."""
    import io

    import numpy as np

    with np.load(ROOT / "build" / "datasets" / "digits.npz") as f:
        out = io.BytesIO()
        np.savez(out, x=f["x_train"][:SHARD], y=f["y_train"][:SHARD])
    return out.getvalue()

# A page that does nothing but load Pyodide and NumPy from the server in a module
# worker, as webfl's does: the baseline for what webfl adds to start-up. It marks its
# steps with the names webfl's worker uses (worker/timing.js), for the breakdown.
BARE_PAGE = """<!doctype html><meta charset="utf-8"><title>bare</title><script type="module">
const origin = location.origin;
const code = `
performance.mark("webfl:worker-ready");
let t = performance.now();
const py = await (await import("${origin}/pyodide/__VERSION__/pyodide.mjs")).loadPyodide({ indexURL: "${origin}/pyodide/__VERSION__/" });
performance.measure("webfl:pyodide", { start: t });
t = performance.now();
await py.loadPackage("${origin}__NUMPY__", { messageCallback() {} });
py.pyimport("numpy");
performance.measure("webfl:numpy-load", { start: t });
performance.mark("webfl:connecting");
postMessage("ready");`;
window.start = () => new Promise((resolve) => {
  performance.mark("webfl:join");
  const w = new Worker(URL.createObjectURL(new Blob([code], { type: "text/javascript" })), { type: "module" });
  w.onmessage = () => resolve();
});
</script>"""

# The start-up steps a page and its workers measured, relative to their own time origins.
STEPS_JS = """() => ({
  origin: performance.timeOrigin,
  entries: performance.getEntries().filter((e) => e.name.startsWith("webfl:"))
    .map((e) => ({ name: e.name.slice(6), kind: e.entryType, start: e.startTime, duration: e.duration })),
})"""

#: The breakdown's rows: step name (a "webfl:" mark or measure) and what it is.
STEPS = (
    ("worker", "worker started (its script fetched)"),
    ("worker-ready", "worker's modules loaded and run"),
    ("config", "configuration fetched (only without the page's)"),
    ("records", "IndexedDB records read (in parallel)"),
    ("pyodide", "Pyodide loaded (runtime download, wasm compile, stdlib)"),
    ("numpy-verify", "NumPy wheel sha256 checked"),
    ("numpy-load", "NumPy loaded and imported"),
    ("core-verify", "core wheel arrived, sha256 checked"),
    ("core-import", "core unpacked, webfl.core.browser imported"),
    ("kernel", "kernel instantiated, self-checked"),
    ("session", "BrowserSession created"),
    ("restore", "kept records handed to the session"),
    ("connecting", "ready (\"Connecting\")"),
)


def start_up_steps(page) -> dict[str, tuple[float, float]]:
    """Step name -> (ms after the click it began, ms it took or None for a mark), page and workers."""
    sides = [page.evaluate(STEPS_JS)] + [w.evaluate(STEPS_JS) for w in page.workers]
    joins = [s["origin"] + e["start"] for s in sides for e in s["entries"] if e["name"] == "join"]
    if not joins:
        return {}
    join = max(joins)  # the last click: this load's
    steps = {
        e["name"]: (s["origin"] + e["start"] - join, None if e["kind"] == "mark" else e["duration"])
        for s in sides for e in s["entries"]
    }
    if sides[1:]:
        steps["worker"] = (max(s["origin"] for s in sides[1:]) - join, None)
    return steps

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "WEBFL_ADMIN_TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "webfl.cli", "serve", "--port", str(port), "--data-dir", str(data_dir), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def admin(url: str, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url + path, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def load_once(context, url: str) -> tuple[float, int, object]:
    """Open the page, consent, time until the runtime is ready; returns (s, bytes, page)."""
    received = []

    def on_finished(request):
        try:
            sizes = request.sizes()
            received.append(sizes["responseBodySize"] + sizes["responseHeadersSize"])
        except Exception:  # a request that failed or was cancelled
            pass

    context.on("requestfinished", on_finished)
    page = context.new_page()
    page.goto(url)
    page.wait_for_load_state("load")
    # As a volunteer reading the consent text would: the runtime cache is in place first.
    page.wait_for_function("() => navigator.serviceWorker.controller !== null", timeout=30_000)
    received.clear()  # count what joining costs, not the HTML page itself
    start = time.perf_counter()
    page.get_by_test_id("join").click()
    page.wait_for_function(
        "() => ['Connecting', 'Downloading your demo data'].includes(document.querySelector('[data-testid=load-stage]').textContent)"
        " || document.querySelector('[data-testid=state]').dataset.state !== 'loading'",
        timeout=180_000,
    )
    elapsed = time.perf_counter() - start
    state = page.get_by_test_id("state").text_content()
    if state == "error":
        raise RuntimeError(page.get_by_test_id("error").text_content())
    page.wait_for_function("() => document.querySelector('[data-testid=state]').dataset.state === 'idle'", timeout=60_000)
    time.sleep(0.5)  # let the last requestfinished events arrive
    context.remove_listener("requestfinished", on_finished)
    return elapsed, sum(received), page


def bare_load(context, url: str, config: dict) -> tuple[float, dict]:
    """Seconds until a bare page's worker has Pyodide + NumPy (see BARE_PAGE), and its steps."""
    html = BARE_PAGE.replace("__VERSION__", config["pyodide"]["version"]).replace("__NUMPY__", config["numpy"]["url"])
    context.route(url + "/bare", lambda route: route.fulfill(status=200, content_type="text/html", body=html))
    page = context.new_page()
    page.goto(url + "/bare")
    start = time.perf_counter()
    page.evaluate("() => window.start()")
    elapsed = time.perf_counter() - start
    steps = start_up_steps(page)
    page.close()
    return elapsed, steps


def webfl_load(context, url: str) -> tuple[float, dict]:
    """Seconds from the consent click until webfl's runtime is ready (no waiting for the
    service worker), and its steps."""
    page = context.new_page()
    page.goto(url)
    start = time.perf_counter()
    page.get_by_test_id("join").click()
    page.wait_for_function(
        "() => ['Connecting', 'Downloading your demo data'].includes(document.querySelector('[data-testid=load-stage]').textContent)",
        timeout=180_000,
    )
    elapsed = time.perf_counter() - start
    steps = start_up_steps(page)
    page.close()
    return elapsed, steps


def startup_pairs(browser, url: str, config: dict, repeat: int) -> tuple[dict[str, float], dict[str, float], dict[str, dict]]:
    """webfl and the bare page, cold (a fresh context) then warm (the same context again),
    interleaved ``repeat`` times. Returns the best of each as the pages clocked it (their
    "join" mark to their worker's "connecting" mark: the same two points on both pages),
    the best as this script saw it (wall clock: Playwright's click, with its actionability
    checks, and its polling of the page's text for webfl; one evaluate for the bare page),
    and the steps of each page's best start, cold and warm."""
    names = ("webfl cold", "webfl warm", "bare cold", "bare warm")
    clocked: dict[str, list[float]] = {name: [] for name in names}
    wall: dict[str, list[float]] = {name: [] for name in names}
    steps: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(repeat):
        for page, load in (("webfl", lambda c: webfl_load(c, url)), ("bare", lambda c: bare_load(c, url, config))):
            context = browser.new_context()
            for name in (f"{page} cold", f"{page} warm"):
                seconds, visit_steps = load(context)
                wall[name].append(seconds)
                clocked[name].append(visit_steps["connecting"][0] / 1000)
                steps[name].append(visit_steps)
            context.close()
    best = {name: steps[name][clocked[name].index(min(clocked[name]))] for name in names}
    return {n: min(ts) for n, ts in clocked.items()}, {n: min(ts) for n, ts in wall.items()}, best


def steps_table(best: dict[str, dict]) -> list[str]:
    """The best start of webfl and of the bare page, cold and warm, step by step (ms after the click)."""
    cell = lambda steps, name: (
        "" if name not in steps else
        f"at {steps[name][0]:.0f}" if steps[name][1] is None else
        f"{steps[name][0]:.0f} + {steps[name][1]:.0f}"
    )
    columns = ("webfl cold", "bare cold", "webfl warm", "bare warm")
    lines = [f"| start-up step, ms after Join (start + duration) | {' | '.join(columns)} |", "|---|" + "---:|" * len(columns)]
    for name, what in STEPS:
        if any(name in best[c] for c in columns):
            lines.append(f"| {what} | {' | '.join(cell(best[c], name) for c in columns)} |")
    return lines


def native_epochs(npz: bytes, repeat: int, batch_size: int, task: str = "mnist") -> list[float]:
    """Same code, native, in a subprocess with one BLAS thread and the machine's numpy as it runs best."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT / "backend"))
    with tempfile.NamedTemporaryFile(suffix=".npz") as f:
        f.write(npz)
        f.flush()
        model = "2nn" if task == "mnist" else None
        code = EPOCH_CODE + f"\nimport json; print(json.dumps(epoch_times(open({f.name!r}, 'rb').read(), {repeat}, {batch_size}, 'numpy', {task!r}, {model!r})['times']))"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def pyodide_epochs(page, npz: bytes, repeat: int, batch_size: int, backend: str, task: str = "mnist") -> list[float]:
    """Epoch times in the page's worker with ``backend`` ("active": whatever the page installed, or "numpy")."""
    worker = next(w for w in page.workers if w.url.endswith("/worker.js"))
    out = worker.evaluate(
        """async ([code, npz, repeat, batch, backend, task, model]) => {
            const py = self.pyodide;
            py.runPython(code);
            const fn = py.globals.get("epoch_times");
            const out = fn(new Uint8Array(npz), repeat, batch, backend, task, model);
            const result = out.toJs({ dict_converter: Object.fromEntries });
            out.destroy(); fn.destroy();
            return result;
        }""",
        [EPOCH_CODE.replace("npz)", "npz.to_bytes())"), list(npz), repeat, batch_size, backend, task, "2nn" if task == "mnist" else None],
    )
    if backend == "active" and out["backend"] != "wasm-simd128":
        raise RuntimeError(f"the page trains with {out['backend']}, not the wasm kernel (is clang installed? make setup)")
    return out["times"]


def long_tasks_while_training(page, url: str, rounds: int) -> dict:
    page.evaluate(
        """() => {
            window.__longtasks = [];
            new PerformanceObserver((list) => window.__longtasks.push(...list.getEntries().map((e) => e.duration)))
              .observe({ type: "longtask" });
        }"""
    )
    before = len(admin(url, "GET", "/api/status")["history"])
    start = time.perf_counter()
    admin(url, "POST", "/api/rounds", {"rounds": rounds, "clients_per_round": 1, "local_epochs": 2, "deadline_s": 120})
    while len(admin(url, "GET", "/api/status")["history"]) < before + rounds:
        time.sleep(0.2)
    elapsed = time.perf_counter() - start
    tasks = page.evaluate("() => window.__longtasks")
    return {"seconds": elapsed, "count": len(tasks), "max_ms": max(tasks, default=0.0), "total_ms": sum(tasks)}


def training(page, url: str, npz: bytes, repeat: int) -> tuple[dict, dict, dict]:
    """Epoch times (2NN at each batch size, digits CNN) in the page's worker and natively,
    and the long tasks while training."""
    # Interleaved, best of each: the machine is shared, and whatever else runs
    # would otherwise land on one side of a ratio only. Native takes twice the
    # samples: its short subprocesses are the most exposed to that load, and a
    # slow native best would flatter the ratio.
    times = {batch: {"wasm": [], "numpy": [], "native": []} for batch in BATCHES}
    cnn_npz, cnn = digits_npz(), {"wasm": [], "numpy": [], "native": []}
    for _ in range(repeat):
        for batch, t in times.items():
            t["wasm"] += pyodide_epochs(page, npz, 3, batch, "active")
            t["native"] += native_epochs(npz, 6, batch)
            t["numpy"] += pyodide_epochs(page, npz, 1, batch, "numpy")
        cnn["wasm"] += pyodide_epochs(page, cnn_npz, 3, CNN_BATCH, "active", CNN_TASK)
        cnn["native"] += native_epochs(cnn_npz, 6, CNN_BATCH, CNN_TASK)
        cnn["numpy"] += pyodide_epochs(page, cnn_npz, 1, CNN_BATCH, "numpy", CNN_TASK)
    epochs = {batch: {side: min(ts) for side, ts in t.items()} for batch, t in times.items()}
    cnn = {side: min(ts) for side, ts in cnn.items()}
    return epochs, cnn, long_tasks_while_training(page, url, rounds=2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds of start-up pairs and of timed epochs (the best is reported)")
    parser.add_argument("--startup-only", action="store_true", help="measure start-up alone: no epochs, no long tasks")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"bench/browser.py: {CHROMIUM} is missing (make setup installs it); skipped")
        return 0
    from playwright.sync_api import sync_playwright

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="webfl-bench-"))
    proc, url = start_server(work / "data")
    rows: list[tuple[str, str]] = []
    try:
        npz = urllib.request.urlopen(url + "/data/mnist/shards/0.npz").read()
        with sync_playwright() as pw:
            gz = pw.chromium.launch_persistent_context(str(work / "profile-gzip"), executable_path=CHROMIUM, args=ARGS, headless=True)
            cold_s, cold_bytes, page = load_once(gz, url)
            page.close()
            warm_s, warm_bytes, page = load_once(gz, url)
            gz.new_cdp_session(page).send("Network.clearBrowserCache")
            page.close()
            sw_s, sw_bytes, page = load_once(gz, url)

            plain = pw.chromium.launch_persistent_context(
                str(work / "profile-plain"), executable_path=CHROMIUM, args=ARGS, headless=True,
                extra_http_headers={"Accept-Encoding": "identity"},
            )
            plain_s, plain_bytes, plain_page = load_once(plain, url)
            plain.close()

            config = json.loads(urllib.request.urlopen(url + "/api/config").read())
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            pairs, pairs_wall, best_steps = startup_pairs(browser, url, config, args.repeat)
            browser.close()

            epochs, cnn, tasks = ({}, {}, {}) if args.startup_only else training(page, url, npz, args.repeat)
            gz.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)

    mb = lambda n: f"{n / 1e6:.1f} MB"
    rows = [
        ("Pyodide + NumPy + core ready, cold (fresh profile, gzip)", f"{cold_s:.2f} s"),
        ("Pyodide + NumPy + core ready, warm (same profile)", f"{warm_s:.2f} s"),
        ("Pyodide + NumPy + core ready, warm, HTTP cache cleared (service worker's cache only)", f"{sw_s:.2f} s"),
        ("Pyodide + NumPy + core ready, cold, served plain", f"{plain_s:.2f} s"),
        ("Bytes downloaded to join, cold, gzip", mb(cold_bytes)),
        ("Bytes downloaded to join, cold, plain", mb(plain_bytes)),
        ("Bytes downloaded to join, warm", mb(warm_bytes)),
        ("Bytes downloaded to join, warm, HTTP cache cleared", mb(sw_bytes)),
        (f"Interleaved x{args.repeat}, best of: webfl ready, cold / warm (fresh context, then again; Join's handler to the worker's \"Connecting\", as the page clocks it)",
         f"{pairs['webfl cold']:.2f} s / {pairs['webfl warm']:.2f} s"),
        (f"Interleaved x{args.repeat}, best of: bare Pyodide + NumPy page ready, cold / warm (its start() to its worker's ready)",
         f"{pairs['bare cold']:.2f} s / {pairs['bare warm']:.2f} s"),
        ("webfl / bare start-up, cold", f"{pairs['webfl cold'] / pairs['bare cold']:.2f}x"),
        ("webfl / bare start-up, warm", f"{pairs['webfl warm'] / pairs['bare warm']:.2f}x"),
        ("The same by this script's wall clock (Playwright's click and polling on webfl's side), cold / warm",
         f"{pairs_wall['webfl cold']:.2f} s / {pairs_wall['webfl warm']:.2f} s against {pairs_wall['bare cold']:.2f} s / {pairs_wall['bare warm']:.2f} s: "
         f"{pairs_wall['webfl cold'] / pairs_wall['bare cold']:.2f}x / {pairs_wall['webfl warm'] / pairs_wall['bare warm']:.2f}x"),
    ]
    for batch, t in epochs.items():
        rows += [
            (f"One 2NN epoch, {SHARD} examples, batch {batch}: native CPython (1 thread)", f"{t['native'] * 1000:.0f} ms"),
            (f"One 2NN epoch, batch {batch}: Pyodide worker, WebAssembly kernel", f"{t['wasm'] * 1000:.0f} ms ({t['wasm'] / t['native']:.2f}x native)"),
            (f"One 2NN epoch, batch {batch}: Pyodide worker, NumPy alone", f"{t['numpy'] * 1000:.0f} ms ({t['numpy'] / t['native']:.2f}x native)"),
        ]
    if cnn:
        rows += [
            (f"One digits CNN epoch (8x8, conv 16-32, dense 64), {SHARD} examples, batch {CNN_BATCH}: native / Pyodide + kernel / Pyodide + NumPy alone",
             f"{cnn['native'] * 1000:.0f} ms / {cnn['wasm'] * 1000:.0f} ms ({cnn['wasm'] / cnn['native']:.2f}x) / {cnn['numpy'] * 1000:.0f} ms ({cnn['numpy'] / cnn['native']:.2f}x)"),
            (f"Main-thread long tasks while training 2 rounds x 2 epochs ({tasks['seconds']:.1f} s)",
             f"{tasks['count']} (longest {tasks['max_ms']:.0f} ms, total {tasks['total_ms']:.0f} ms)"),
        ]
    # Timings scale with whatever else the machine runs: say how busy it was.
    print(f"Chromium {CHROMIUM}, {os.cpu_count()} cores, server on 127.0.0.1, "
          f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after\n")
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\nBest start of x{args.repeat} each, by step:\n")
    print("\n".join(steps_table(best_steps)))
    if epochs:
        ratio = {batch: t["wasm"] / t["native"] for batch, t in epochs.items()}
        print(f"\npyodide/native epoch ratio: B=10 {ratio[10]:.2f}, B=32 {ratio[32]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
