"""Update and downlink codecs through the real server and simulator: accuracy vs bytes.

For each partition (IID, Dirichlet(0.5)) and each codec, a fresh ``webfl serve`` (same
seed, so the same initial model) runs ``webfl simulate`` for the same rounds with the
same volunteers and data; the final accuracy and the bytes up and down come from
``/api/status`` history. Then native encode/decode throughput of every codec.

    .venv/bin/python bench/codecs.py [--rounds 30] [--clients 10] [--quick]

Prints markdown tables (docs/benchmarks.md, "Compression"). Not part of the tests.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import TOKEN, start_server  # noqa: E402
CODECS = ["none", "fp16", "q8", "q4", "rot+q4", "q2", "rot+q2", "topk:0.05+fp16", "topk:0.01+q8", "topk:0.01"]
# Downlink variants, run with the q8 uplink (IID only).
DOWNLINKS = ["fp16", "delta:q8", "delta:topk:0.05+q8"]
PARTITIONS = [("iid", "IID"), ("dirichlet:0.5", "Dirichlet(0.5)")]


def run(partition: str, codec: str, downlink: str, rounds: int, clients: int) -> dict:
    env = {**os.environ, "WEBFL_ADMIN_TOKEN": TOKEN, "OPENBLAS_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="webfl-bench-") as data:
        server = start_server(Path(data) / "data", "--log-level", "warning")
        try:
            started = time.monotonic()
            sim = [
                sys.executable, "-m", "webfl.cli", "simulate", "--server", server.url, "--clients", str(clients),
                "--partition", partition, "--seed", "0", "--rounds", str(rounds), "--local-epochs", "1",
                "--codec", codec, "--downlink", downlink, "--deadline-s", "600", "--timeout-s", "3000",
            ]
            done = subprocess.run(sim, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"simulate failed for {codec}/{downlink}:\n{done.stderr[-2000:]}")
            history = server.status()["history"]
        finally:
            server.stop()
    return {
        "codec": codec,
        "downlink": downlink,
        "accuracy": history[-1]["accuracy"],
        "best": max(h["accuracy"] for h in history),
        "curve": [h["accuracy"] for h in history],
        "up": sum(h["bytes_up"] for h in history),
        "down": sum(h["bytes_down"] for h in history),
        "seconds": time.monotonic() - started,
    }


def rounds_to_reach(curve: list[float], target: float) -> str:
    for i, acc in enumerate(curve, 1):
        if acc >= target:
            return str(i)
    return f">{len(curve)}"


def table(results: list[dict], title: str) -> str:
    base = results[0]
    lines = [
        f"**{title}** (float32 baseline: {base['accuracy']:.2%}, {base['up'] / 1e6:.1f} MB up, {base['down'] / 1e6:.1f} MB down)",
        "",
        "| uplink codec | downlink | final accuracy | Δ points | rounds to float32's final | bytes up vs float32 | bytes down vs float32 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| `{r['codec']}` | `{r['downlink']}` | {r['accuracy']:.2%} | {100 * (r['accuracy'] - base['accuracy']):+.2f} "
            f"| {rounds_to_reach(r['curve'], base['accuracy'])} | {r['up'] / base['up']:.4f}x | {r['down'] / base['down']:.4f}x |"
        )
    return "\n".join(lines)


def throughput() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
    from webfl.core.codecs import get_codec
    from webfl.core.tasks import get_task

    n = get_task("mnist").build_model().size
    x = np.random.default_rng(0).normal(0, 0.01, n).astype(np.float32)
    mb = x.nbytes / 1e6
    lines = [
        f"Native NumPy {np.__version__}, one thread, a {n}-value delta (the 2NN), median of repeats:",
        "",
        "| codec | encode MB/s | decode MB/s | wire bytes vs float32 |",
        "|---|---:|---:|---:|",
    ]
    for spec in CODECS[1:]:
        codec = get_codec(spec)
        rng = np.random.default_rng(1)
        enc = codec.encode(x, rng)
        t_enc, t_dec = [], []
        for _ in range(7):
            t = time.perf_counter()
            enc = codec.encode(x, rng)
            t_enc.append(time.perf_counter() - t)
            t = time.perf_counter()
            codec.decode(enc, n)
            t_dec.append(time.perf_counter() - t)
        lines.append(f"| `{spec}` | {mb / np.median(t_enc):.0f} | {mb / np.median(t_dec):.0f} | {enc.nbytes / x.nbytes:.4f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="throughput only")
    args = parser.parse_args()
    if not args.quick:
        for partition, name in PARTITIONS:
            results = []
            for codec in CODECS:
                results.append(run(partition, codec, "none", args.rounds, args.clients))
                print(f"[bench] {name} {codec}: {results[-1]['accuracy']:.4f} in {results[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
            if partition == "iid":
                for downlink in DOWNLINKS:
                    results.append(run(partition, "q8", downlink, args.rounds, args.clients))
                    print(f"[bench] {name} q8/{downlink}: {results[-1]['accuracy']:.4f}", file=sys.stderr, flush=True)
            title = f"MNIST 2NN, {name}, {args.clients} volunteers, {args.rounds} rounds, 1 local epoch"
            print(table(results, title) + "\n", flush=True)
    print(throughput(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
