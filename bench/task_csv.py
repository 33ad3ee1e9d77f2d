"""Parse time of a volunteer's 30,000-row task CSV, natively and inside Pyodide.

    python3 bench/task_csv.py [--rows 30000] [--no-pyodide]

The file has 30 named feature columns, a label column of class names and two extra
columns (an id and a free-text note), shuffled in the header. ``parse_task_csv`` matches
the columns by name, checks every cell and maps the labels; the baseline, timed in the
same run on the same text, is NumPy's C ``loadtxt`` reading only the 30 numeric columns by
position (no matching, no labels, no line-numbered errors). Each time is the median of 5.
The Pyodide column runs the same code in Pyodide 0.27.7 under Node with the NumPy and
core wheels set-up built into ``wheels/`` (run ``make setup`` after changing the core).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))  # the working tree's webfl

CODE = """
import io, time, numpy as np
from webfl.core.data import parse_task_csv
def make(n):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (n, 30)) * rng.uniform(0.01, 1000, 30)
    features = [f"f{i}" for i in range(30)]
    order = rng.permutation(30)
    header = ",".join(["id", *[features[j] for j in order[:15]], "label", "note", *[features[j] for j in order[15:]]])
    lines = [header]
    for i, row in enumerate(x):
        cells = [f"{row[j]:.6g}" for j in order]
        lines.append(",".join([str(i), *cells[:15], ("benign", "malignant")[i % 2], f"n{i}", *cells[15:]]))
    numeric = [1 + k if k < 15 else 3 + k for k in range(30)]
    return "\\n".join(lines) + "\\n", features, numeric
def median(f):
    ts = []
    for _ in range(5):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return float(np.median(ts))
text, features, numeric = make(ROWS)
data = text.encode()
ours = median(lambda: parse_task_csv(data, features, "label", ["benign", "malignant"]))
base = median(lambda: np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, usecols=numeric))
(len(data), ours, base)
"""

NODE = """
import { loadPyodide } from "%(pyodide)s/pyodide.mjs";
import { readFileSync, readdirSync } from "fs";
const py = await loadPyodide({ indexURL: "%(pyodide)s/" });
for (const wheel of readdirSync("%(wheels)s").filter((f) => f.endsWith(".whl"))) {
  await py.loadPackage("%(wheels)s/" + wheel, { errorCallback: (e) => { console.error(e); process.exit(1); } });
}
console.log(JSON.stringify(py.runPython(readFileSync(0, "utf8")).toJs()));
"""


def native(code: str) -> tuple[int, float, float]:
    scope: dict = {}
    exec(code.replace("(len(data), ours, base)", "result = (len(data), ours, base)"), scope)
    return scope["result"]


def pyodide(code: str) -> tuple[int, float, float]:
    """Run ``code`` in Pyodide under Node with the NumPy and core wheels that set-up put in ``wheels/``."""
    root = Path(__file__).resolve().parents[1]
    script = NODE % {"pyodide": root / "node_modules" / "pyodide", "wheels": root / "wheels"}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "run.mjs").write_text(script)
        out = subprocess.run(["node", str(Path(tmp) / "run.mjs")], input=code, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise SystemExit(f"node failed: {out.stderr[-2000:]}")
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--no-pyodide", action="store_true")
    args = parser.parse_args()
    code = CODE.replace("ROWS", str(args.rows))
    runs = [("native CPython " + sys.version.split()[0], native(code))]
    if not args.no_pyodide:
        runs.append(("Pyodide 0.27.7 (NumPy 2.0.2, wasm32) in Node", pyodide(code)))
    print(f"{args.rows:,}-row CSV, 30 features + label + 2 extra columns ({runs[0][1][0] / 1e6:.1f} MB), "
          f"{os.cpu_count()} cores, median of 5:\n")
    print("| runtime | parse_task_csv | loadtxt baseline (30 numeric columns only) | ratio |\n|---|---:|---:|---:|")
    for name, (_, ours, base) in runs:
        print(f"| {name} | {ours * 1000:.0f} ms | {base * 1000:.0f} ms | {ours / base:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
