"""Time each aggregation rule on one round of 2NN-sized updates, relative to FedAvg.

    python3 bench/aggregation_rules.py [--updates 100] [--repeat 9]

A round is ``begin`` + ``add`` of every update through the ``"none"`` codec + ``finish``,
the work the server does per round. Every rule runs in the same process on the same
updates; each time is the median of ``--repeat`` rounds. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))  # the working tree's webfl

from webfl.core.aggregation import get_aggregator  # noqa: E402
from webfl.core.codecs import get_codec  # noqa: E402
from webfl.core.models import build_model  # noqa: E402

RULES = ["fedavg", "clipped", "clipped:1.0", "median", "trimmed_mean:0.1", "multikrum", "multikrum:f=10,m=50"]


def one_round(spec: str, codec, encoded, weights, size: int) -> tuple[float, float]:
    agg = get_aggregator(spec)
    start = time.perf_counter()
    agg.begin(size, len(encoded))
    for enc, w in zip(encoded, weights):
        agg.add(codec, enc, w)
    added = time.perf_counter()
    agg.finish()
    return added - start, time.perf_counter() - added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()

    size = build_model("2nn").size
    rng = np.random.default_rng(0)
    codec = get_codec("none")
    mean = rng.standard_normal(size).astype(np.float32) * 0.01
    deltas = (mean + 0.01 * rng.standard_normal(size, dtype=np.float32) for _ in range(args.updates))
    encoded = [codec.encode(delta, rng) for delta in deltas]
    weights = rng.integers(100, 600, args.updates).astype(float)

    for spec in RULES:
        one_round(spec, codec, encoded, weights, size)  # warm-up: page faults, BLAS threads
    # Rules take turns within each repetition, so drifting machine load hits them alike.
    times: dict[str, list[tuple[float, float]]] = {spec: [] for spec in RULES}
    for _ in range(args.repeat):
        for spec in RULES:
            times[spec].append(one_round(spec, codec, encoded, weights, size))

    rows = []
    for spec in RULES:
        adds, finishes = zip(*times[spec])
        totals = [a + f for a, f in zip(adds, finishes)]
        agg = get_aggregator(spec)
        memory = type(agg).memory_bytes(size, args.updates)
        rows.append((agg.spec, statistics.median(adds), statistics.median(finishes), statistics.median(totals), memory))

    base = rows[0][3]
    print(
        f"{args.updates} updates x {size:,} float32 (2NN), median of {args.repeat};"
        f" NumPy {np.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPU(s),"
        f" OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}\n"
    )
    print("| rule | begin+add (ms) | finish (ms) | round (ms) | vs fedavg | memory bound (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for spec, add, fin, total, memory in rows:
        cells = [f"`{spec}`", f"{add * 1e3:.1f}", f"{fin * 1e3:.1f}", f"{total * 1e3:.1f}", f"{total / base:.2f}x"]
        print(f"| {' | '.join(cells)} | {memory / 2**20:.1f} |")


if __name__ == "__main__":
    main()
