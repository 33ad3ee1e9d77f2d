"""Robust aggregation under attack: MNIST 2NN through the real server and simulator.

    python3 bench/robust.py [--partitions iid,dirichlet:0.5] [--rounds 10] [--clients 20]
    python3 bench/robust.py --report          # print the tables from the saved results

For every partition, the clean run of each rule, then every (attacker fraction, attack,
rule): a fresh ``webfl serve`` (own data dir, same seed, so the same initial model and
shards), ``webfl.simulate.Simulation`` with that fraction of attackers, final test accuracy
from the server's history and backdoor success (fraction of triggered non-target test
images classified as the target) from the model downloaded with ``GET /api/model``.
Results are appended to ``bench/results/robust.jsonl`` as they come (a rerun skips the
configurations already there), then printed as markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parents[0] / "backend"))  # the working tree's webfl, unless installed or on PYTHONPATH
sys.path.append(str(HERE.parents[0] / "tests"))

import numpy as np  # noqa: E402

from servers import start_server  # noqa: E402
from webfl.build.paths import DATASETS_DIR  # noqa: E402
from webfl.core.attacks import ATTACKS, backdoor_success  # noqa: E402
from webfl.core.data import load_npz  # noqa: E402
from webfl.core.tasks import get_task  # noqa: E402
from webfl.simulate import Simulation  # noqa: E402

RULES = ["fedavg", "clipped", "median", "trimmed_mean:0.2", "multikrum"]
FRACTIONS = [0.1, 0.2]
RESULTS = HERE / "results" / "robust.jsonl"


def key(r: dict) -> tuple:
    return (r["partition"], r["fraction"], r["attack"], r["rule"], r["rounds"], r["clients"])


def one_run(partition: str, fraction: float, attack: str | None, rule: str, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="webfl-robust-") as tmp:
        server = start_server(Path(tmp) / "data", "--seed", str(args.seed), "--log-level", "warning")
        try:
            sim = Simulation(server.url, args.clients, partition, seed=args.seed, token=server.token,
                             malicious=fraction, attack=attack)
            config = {"rounds": args.rounds, "clients_per_round": args.clients, "local_epochs": 1, "batch_size": 32,
                      "lr": args.lr, "deadline_s": 60.0, "min_updates": max(1, args.clients // 2), "aggregator": rule}
            started = time.monotonic()
            code = asyncio.run(sim.main(config, timeout_s=900))
            elapsed = time.monotonic() - started
            status = server.status()
            req = urllib.request.Request(server.url + "/api/model", headers={"Authorization": f"Bearer {server.token}"})
            with urllib.request.urlopen(req) as resp:
                params = np.load(io.BytesIO(resp.read()))["params"]
        finally:
            server.stop()
    model = get_task("mnist").build_model()
    test = load_npz(DATASETS_DIR / "mnist.npz", "test")
    history = status["history"]
    return {
        "partition": partition, "fraction": fraction, "attack": attack or "none", "rule": rule,
        "rounds": args.rounds, "clients": args.clients, "ok": code == 0,
        "accuracy": history[-1]["accuracy"] if history else None,
        "backdoor": backdoor_success(lambda x: model.logits(params, x), test),
        "attackers": len(sim.malicious), "seconds": round(elapsed, 1),
        "rejections": status.get("rejections"),
    }


def load() -> list[dict]:
    if not RESULTS.exists():
        return []
    return [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]


def report(results: list[dict], rounds: int, clients: int) -> str:
    out = []
    rows = [r for r in results if r["rounds"] == rounds and r["clients"] == clients]
    for partition in dict.fromkeys(r["partition"] for r in rows):
        part = {(r["fraction"], r["attack"], r["rule"]): r for r in rows if r["partition"] == partition}
        clean = part.get((0.0, "none", "fedavg"))
        base = clean["accuracy"] if clean else None
        out.append(f"\n**{partition}**, {clients} clients, {rounds} rounds: final test accuracy"
                   f" (x clean FedAvg = {base:.4f})" if base else f"\n**{partition}**")
        out.append("")
        out.append("| attackers | attack | " + " | ".join(RULES) + " |")
        out.append("|---|---|" + "---|" * len(RULES))
        scenarios = [(0.0, "none")] + [(f, a) for f in FRACTIONS for a in ATTACKS]
        for f, a in scenarios:
            cells = []
            for rule in RULES:
                r = part.get((f, a, rule))
                if r is None or r["accuracy"] is None:
                    cells.append("–")
                    continue
                cell = f"{r['accuracy']:.3f} ({r['accuracy'] / base:.2f}x)" if base else f"{r['accuracy']:.3f}"
                if a == "backdoor":
                    cell += f", bd {r['backdoor']:.2f}"
                if not r["ok"]:
                    cell += " *"
                cells.append(cell)
            out.append(f"| {int(f * 100)}% | {a} | " + " | ".join(cells) + " |")
        bd = [part.get((0.0, "none", rule)) for rule in RULES]
        out.append("")
        out.append("Backdoor success with no attackers (the trigger's base rate): "
                   + ", ".join(f"{rule} {r['backdoor']:.2f}" for rule, r in zip(RULES, bd) if r))
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--partitions", default="iid,dirichlet:0.5")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--report", action="store_true", help="only print the tables of saved results")
    args = p.parse_args()
    if not args.report:
        RESULTS.parent.mkdir(exist_ok=True)
        done = {key(r) for r in load()}
        for partition in args.partitions.split(","):
            plan = [(0.0, None, rule) for rule in args.rules.split(",")]
            plan += [(f, a, rule) for f in FRACTIONS for a in args.attacks.split(",") for rule in args.rules.split(",")]
            for fraction, attack, rule in plan:
                k = (partition, fraction, attack or "none", rule, args.rounds, args.clients)
                if k in done:
                    continue
                r = one_run(partition, fraction, attack, rule, args)
                print(json.dumps(r), flush=True)
                with RESULTS.open("a") as f:
                    f.write(json.dumps(r) + "\n")
    print(report(load(), args.rounds, args.clients))
    return 0


if __name__ == "__main__":
    sys.exit(main())
