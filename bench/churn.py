"""Learning under churn and asynchrony, through the real server and simulator.

    python3 bench/churn.py [--part time|rounds|all] [--clients 30] [--cap-s 420]

MNIST split Dirichlet(0.5) over ``--clients`` simulated volunteers, the 2NN model.
The target is 95% of the accuracy of the same model trained centrally (computed in
this run, on the same machine). Two tables (markdown):

* ``time``: 30% of the selected volunteers vanish mid-training (silent until the round
  deadline) and volunteers are up to 10x slower than others (log-uniform): wall-clock
  time to the target for synchronous FedAvg, synchronous with over-selection 1.5, and
  FedBuff (K = clients per round, 1.5x as many in flight). Run one after the other.
* ``rounds``: rounds to the target for the server optimizers FedAvg, FedAvgM, FedAdam
  and FedYogi (no churn; rounds do not depend on the wall clock).

Each configuration gets a fresh server (``webfl serve``) and ``webfl simulate`` process.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))  # the working tree's webfl
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from servers import TOKEN, start_server  # noqa: E402
from webfl.build.paths import DATASETS_DIR  # noqa: E402
from webfl.core.data import features, load_npz  # noqa: E402
from webfl.core.models import build_model  # noqa: E402
from webfl.core.training import TrainConfig, local_train  # noqa: E402

BASE = {"clients_per_round": 10, "local_epochs": 1, "batch_size": 32, "lr": 0.1, "min_updates": 1}
TIME_RUNS = [
    ("synchronous FedAvg", {"mode": "sync"}),
    ("synchronous, over-selection 1.5", {"mode": "sync", "over_selection": 1.5}),
    ("FedBuff (K=10, 15 in flight)", {"mode": "fedbuff", "buffer_size": 10, "over_selection": 1.5}),
]
OPT_RUNS = [
    ("FedAvg", "fedavg"),
    ("FedAvgM (lr 1, momentum 0.5)", "fedavgm:lr=1,momentum=0.5"),
    ("FedAdam (lr 0.01, tau 1e-3)", "fedadam:lr=0.01,tau=0.001"),
    ("FedYogi (lr 0.01, tau 1e-3)", "fedyogi:lr=0.01,tau=0.001"),
]


def centralized_accuracy(epochs: int) -> float:
    train, test = load_npz(DATASETS_DIR / "mnist.npz", "train"), load_npz(DATASETS_DIR / "mnist.npz", "test")
    model = build_model("2nn", 784, 10)
    params = model.init(0)
    result = local_train(model, params, features(train.x), train.y, TrainConfig(epochs=epochs, batch_size=32, lr=0.1))
    return model.evaluate(result.params, features(test.x), test.y)[1]


def one_run(config: dict, sim_args: list[str], target: float, cap_s: float, clients: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="webfl-churn-"))
    server = start_server(tmp / "data", "--demo-shards", "2")
    sim = subprocess.Popen(
        [sys.executable, "-m", "webfl.cli", "simulate", "--server", server.url, "--clients", str(clients),
         "--partition", "dirichlet:0.5", "--timeout-s", str(cap_s + 60), *sim_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "WEBFL_ADMIN_TOKEN": TOKEN},
    )
    try:
        server.wait_for(lambda s: s["volunteers"]["ready"] >= min(clients, 15), timeout=120, what="volunteers")
        code, body = server.api("POST", "/api/rounds", {**BASE, **config})
        assert code == 202, body
        started = time.time()
        reached, status = None, None
        while time.time() - started < cap_s:
            status = server.status()
            hit = [h for h in status["history"] if h["accuracy"] >= target]
            if hit:
                reached = hit[0]
                break
            time.sleep(0.5)
        history = (status or server.status())["history"]
        return {
            "seconds": None if reached is None else reached["committed_at"] - started,
            "rounds": None if reached is None else reached["round"],
            "commits": len(history),
            "best": max((h["accuracy"] for h in history), default=0.0),
            "waits": (status or {}).get("waits_sent", 0),
        }
    finally:
        sim.terminate()
        try:
            sim.wait(timeout=20)
        except subprocess.TimeoutExpired:
            sim.kill()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def fmt(x, unit="") -> str:
    return "not reached" if x is None else f"{x:.0f}{unit}" if isinstance(x, float) else f"{x}{unit}"


def ratio(x, base) -> str:
    return "" if x is None or base is None else f"{x / base:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["time", "rounds", "all"], default="all")
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--cap-s", type=float, default=420.0, help="give each configuration this long")
    parser.add_argument("--max-rounds", type=int, default=80)
    parser.add_argument("--central-epochs", type=int, default=5)
    args = parser.parse_args()
    central = centralized_accuracy(args.central_epochs)
    target = 0.95 * central
    print(f"Centralized 2NN ({args.central_epochs} epochs of SGD, lr 0.1, batch 32): test accuracy {central:.4f}; "
          f"target 95% of it = {target:.4f}. {args.clients} volunteers, Dirichlet(0.5), 10 per round, 1 local epoch. "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.\n", flush=True)
    if args.part in ("time", "all"):
        churn = ["--dropout", "0.3", "--speed-spread", "10", "--away-s", "5"]
        rows = [(name, one_run({**cfg, "rounds": args.max_rounds, "deadline_s": 5}, churn, target, args.cap_s, args.clients))
                for name, cfg in TIME_RUNS]
        base = rows[0][1]["seconds"]
        print("| run (30% vanish, 10x speed spread) | time to target | vs sync FedAvg | commits to target | best accuracy | waits sent |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, r in rows:
            print(f"| {name} | {fmt(r['seconds'], ' s')} | {ratio(r['seconds'], base)} | {fmt(r['rounds'])} | {r['best']:.4f} | {r['waits']} |", flush=True)
        print()
    if args.part in ("rounds", "all"):
        rows = [(name, one_run({"mode": "sync", "server_opt": spec, "rounds": args.max_rounds, "deadline_s": 30}, [], target, args.cap_s, args.clients))
                for name, spec in OPT_RUNS]
        base = rows[0][1]["rounds"]
        print("| server optimizer | rounds to target | vs FedAvg | best accuracy |")
        print("|---|---:|---:|---:|")
        for name, r in rows:
            print(f"| {name} | {fmt(r['rounds'])} | {ratio(r['rounds'], base)} | {r['best']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
