"""FedAvg on MNIST through the real server, next to centralized training; and the
streaming accumulator against "stack every update, then np.average".

    .venv/bin/python bench/fedavg.py [--rounds 50] [--clients 10]

(a) For IID, Dirichlet(0.5) and pathological non-IID shards: test accuracy per round
of 10 simulated volunteers against a real `webfl serve`, beside centralized SGD on the
pooled training split with the same model, seed and budget (one "round" = the same
local epochs over all the data), and the rounds each partition needs to reach 97% of
the final centralized accuracy.
(b) Aggregation throughput and peak memory for 10, 100 and 1,000 updates of the 2NN.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import TOKEN, start_server  # noqa: E402

from webfl.build.paths import MNIST_NPZ  # noqa: E402
from webfl.core.aggregation import FedAvg  # noqa: E402
from webfl.core.codecs import Encoded, get_codec  # noqa: E402
from webfl.core.data import features, load_npz  # noqa: E402
from webfl.core.protocol import Message, decode, encode  # noqa: E402
from webfl.core.tasks import get_task  # noqa: E402
from webfl.core.training import TrainConfig, local_train  # noqa: E402
from webfl.server.engine import RunConfig  # noqa: E402

PARTITIONS = ("iid", "dirichlet:0.5", "noniid")
SHOWN_ROUNDS = (1, 2, 3, 5, 10, 15, 20, 30, 40, 50)


def federated(partition: str, rounds: int, clients: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "data")
        try:
            cmd = [sys.executable, "-m", "webfl.cli", "simulate", "--server", server.url, "--clients", str(clients),
                   "--partition", partition, "--rounds", str(rounds), "--timeout-s", "3600"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "WEBFL_ADMIN_TOKEN": TOKEN})
            return [h["accuracy"] for h in server.status()["history"]]
        finally:
            server.stop()


def centralized(rounds: int) -> list[float]:
    """SGD on the pooled split: per round, the local epochs every volunteer runs."""
    defaults = RunConfig()
    train, test = load_npz(MNIST_NPZ, "train"), load_npz(MNIST_NPZ, "test")
    model = get_task("mnist").build_model()
    params, out = model.init(0), []
    x, xt = features(train.x), features(test.x)
    for r in range(rounds):
        config = TrainConfig(defaults.local_epochs, defaults.batch_size, defaults.lr, seed=r)
        params = local_train(model, params, x, train.y, config).params
        out.append(model.evaluate(params, xt, test.y)[1])
    return out


def rounds_to(curve: list[float], target: float) -> str:
    hit = next((i + 1 for i, a in enumerate(curve) if a >= target), None)
    return str(hit) if hit else f"> {len(curve)}"


def accuracy_tables(rounds: int, clients: int) -> None:
    t0 = time.monotonic()
    curves = {"centralized": centralized(rounds)}
    for p in PARTITIONS:
        print(f"[bench] {p}: {rounds} rounds with {clients} volunteers ...", file=sys.stderr, flush=True)
        curves[p] = federated(p, rounds, clients)
    target = 0.97 * curves["centralized"][-1]
    print(f"\n### FedAvg, 2NN, {clients} volunteers, E={RunConfig().local_epochs}, B={RunConfig().batch_size}, "
          f"lr={RunConfig().lr}: test accuracy by round ({time.monotonic() - t0:.0f} s)\n")
    print("| round | " + " | ".join(curves) + " |")
    print("|---:|" + "---:|" * len(curves))
    for r in (r for r in SHOWN_ROUNDS if r <= rounds):
        print(f"| {r} | " + " | ".join(f"{c[r - 1]:.4f}" for c in curves.values()) + " |")
    print(f"\nRounds to reach 97% of centralized accuracy ({target:.4f}):\n")
    print("| partition | rounds |\n|---|---:|")
    for p in PARTITIONS:
        print(f"| {p} | {rounds_to(curves[p], target)} |")


def update_frames(size: int, distinct: int = 8) -> list[bytes]:
    rng = np.random.default_rng(0)
    fields = dict(round=1, model_version=0, loss=1.0, accuracy=0.5, codec="none", codec_params={})
    return [
        encode(Message("update", {**fields, "num_examples": int(rng.integers(50, 1000))}, (rng.normal(0, 0.01, size).astype(np.float32),)))
        for _ in range(distinct)
    ]


def streaming(frames: list[bytes], n: int, size: int) -> np.ndarray:
    codec, agg = get_codec("none"), FedAvg()
    agg.begin(size, n)
    for i in range(n):
        msg = decode(frames[i % len(frames)])
        agg.add(codec, Encoded(msg["codec_params"], msg.arrays), msg["num_examples"])
    return agg.finish()


def naive(frames: list[bytes], n: int, size: int) -> np.ndarray:
    updates, weights = [], []
    for i in range(n):
        msg = decode(frames[i % len(frames)])
        # A receive buffer is reused for the next frame: keeping the update means a copy.
        updates.append(get_codec("none").decode(Encoded(msg["codec_params"], msg.arrays), size).copy())
        weights.append(msg["num_examples"])
    return np.average(np.stack(updates), axis=0, weights=weights).astype(np.float32)


def measure(fn, *args) -> tuple[float, int, np.ndarray]:
    tracemalloc.start()
    t = time.perf_counter()
    out = fn(*args)
    elapsed = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return elapsed, peak, out


def throughput_table() -> None:
    size = get_task("mnist").build_model().size
    frames = update_frames(size)
    print(f"\n### Aggregating n updates of the 2NN ({size:,} float32 parameters)\n")
    print("| n | streaming updates/s | naive updates/s | speed ratio | streaming peak MB | naive peak MB | memory ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in (10, 100, 1000):
        ts, ms, a = measure(streaming, frames, n, size)
        tn, mn, b = measure(naive, frames, n, size)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        print(f"| {n} | {n / ts:,.0f} | {n / tn:,.0f} | {tn / ts:.2f}x | {ms / 1e6:.1f} | {mn / 1e6:.1f} | {mn / ms:.0f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    throughput_table()
    if not args.skip_accuracy:
        accuracy_tables(args.rounds, args.clients)


if __name__ == "__main__":
    main()
