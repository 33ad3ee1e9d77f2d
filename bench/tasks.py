"""Federated vs centralised, per built-in task, in the same run.

For each task: a real ``webfl serve`` serving all of them, the simulator's volunteers
(each its shard of the task's shipped data, holdout kept aside) train R rounds of E local
epochs; each round's accuracy is the server's (MNIST's held-out digits) or the
federated evaluation over the volunteers' holdouts. Beside it, the same model from the
same initial parameters trained centrally for R x E epochs on the pooled training rows
of those same volunteers, evaluated on the same rows (the pooled holdouts, or MNIST's
held-out digits). "Rounds to 95%" is the first round whose accuracy reaches 95% of the
centralised one; the weakest class is the lowest per-class accuracy of the last round
(on the same rows as its accuracy).

Breast cancer is served as built in, without scaling: the server fixes it from its
volunteers' federated feature statistics before round 1.

    .venv/bin/python bench/tasks.py [--rounds 10] [--clients 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parents[0] / "backend"))  # the working tree's webfl, unless installed or on PYTHONPATH
sys.path.append(str(HERE.parents[0] / "tests"))

import numpy as np  # noqa: E402

from servers import start_server  # noqa: E402
from webfl.build.paths import DATASETS_DIR  # noqa: E402
from webfl.core.data import Dataset, features, load_npz  # noqa: E402
from webfl.core.evaluation import holdout_split  # noqa: E402
from webfl.core.tasks import BUILT_IN, Task  # noqa: E402
from webfl.core.training import TrainConfig, local_train  # noqa: E402
from webfl.simulate import Simulation  # noqa: E402


def _splits(sim: Simulation, task: Task) -> tuple[Dataset, Dataset]:
    """The pooled training rows and the pooled holdouts, split as each volunteer splits its own."""
    train, hold = [], []
    for v, shard in zip(sim.volunteers, sim.shards):
        tr, ho = holdout_split(len(shard), task.holdout, v.holdout_seed)
        train.append(shard.take(tr))
        hold.append(shard.take(ho))
    pool = lambda parts: Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))  # noqa: E731
    return pool(train), pool(hold)


def _get(server, path: str) -> dict:
    req = urllib.request.Request(f"{server.url}{path}", headers={"Authorization": f"Bearer {server.token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _history(server, name: str) -> list[dict]:
    return _get(server, f"/api/tasks/{name}/history")["rounds"]


def run(args) -> list[dict]:
    names = list(BUILT_IN)  # every built-in task; MNIST (the default) first
    assert names[0] == "mnist"
    with tempfile.TemporaryDirectory(prefix="webfl-tasks-") as tmp:
        tasks = {n: BUILT_IN[n] for n in names}
        task_file = Path(tmp) / "tasks.json"
        task_file.write_text(json.dumps([tasks[n].to_json() for n in names[1:]]))  # MNIST comes with --task
        server = start_server(Path(tmp) / "data", "--task", "mnist", "--task-file", str(task_file),
                              "--seed", str(args.seed), "--log-level", "warning")
        results = []
        try:
            for name in names:
                task = tasks[name]
                sim = Simulation(server.url, args.clients, args.partition, seed=args.seed, token=server.token, task=task)
                config = {"rounds": args.rounds, "clients_per_round": args.clients, "local_epochs": args.epochs, "deadline_s": 120.0}
                started = time.monotonic()
                code = asyncio.run(sim.main(config, timeout_s=1800))
                fed_s = time.monotonic() - started
                history = _history(server, name)
                # The model as the server ended with it (breast cancer: with the scaling fixed).
                task = Task.from_json({k: v for k, v in _get(server, f"/api/tasks/{name}").items() if k != "running"})
                t = task.training
                train, hold = _splits(sim, task)
                if name == "mnist":
                    hold = load_npz(DATASETS_DIR / "mnist.npz", "test")  # what the server evaluates on
                model = task.build_model()
                started = time.monotonic()
                params = local_train(model, model.init(args.seed), features(train.x), train.y,
                                     TrainConfig(args.rounds * args.epochs, t.batch_size, t.lr, args.seed)).params
                central_s = time.monotonic() - started
                _, central = model.evaluate(params, features(hold.x), hold.y)
                accs = [r["accuracy"] for r in history]
                per_class = history[-1]["class_accuracy"] if history else None
                worst = None
                if per_class and any(a is not None for a in per_class):
                    i = min((i for i, a in enumerate(per_class) if a is not None), key=lambda i: per_class[i])
                    worst = [task.classes[i], per_class[i]]
                reach = next((r["round"] for r in history if r["accuracy"] is not None and r["accuracy"] >= 0.95 * central), None)
                results.append({
                    "task": name, "ok": code == 0, "rounds": len(history), "source": history[-1]["eval_source"] if history else None,
                    "eval_examples": history[-1]["eval_examples"] if history else 0, "federated": accs[-1] if accs else None,
                    "centralised": central, "rounds_to_95": reach, "worst_class": worst, "federated_s": round(fed_s, 1), "centralised_s": round(central_s, 1),
                })
                print(json.dumps(results[-1]), flush=True)
        finally:
            server.stop()
    return results


def report(results: list[dict], args) -> str:
    out = [f"{args.clients} volunteers ({args.partition}), {args.rounds} rounds of {args.epochs} local epoch(s); "
           f"centralised: {args.rounds * args.epochs} epochs on the pooled training rows.", "",
           "| task | evaluated on | federated accuracy | centralised | ratio | rounds to 95% of centralised | weakest class (last round) | time federated / centralised |",
           "|---|---|---|---|---|---|---|---|"]
    for r in results:
        where = "server's held-out digits" if r["source"] == "server" else f"volunteers' holdouts ({r['eval_examples']} rows)"
        fed = "–" if r["federated"] is None else f"{r['federated']:.4f}"
        ratio = "–" if r["federated"] is None else f"{r['federated'] / r['centralised']:.3f}"
        worst = "–" if r["worst_class"] is None else f"{r['worst_class'][0]}: {r['worst_class'][1]:.3f}"
        out.append(f"| {r['task']} | {where} | {fed} | {r['centralised']:.4f} | {ratio} | {r['rounds_to_95'] or 'not reached'} | {worst} "
                   f"| {r['federated_s']} s / {r['centralised_s']} s |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--partition", default="iid")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    results = run(args)
    print(report(results, args))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
