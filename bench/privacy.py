"""Differential privacy: accuracy against epsilon on MNIST and breast cancer, and an empirical audit.

    python3 bench/privacy.py                       # both parts on both tasks, short default (~5 min on 2 cores)
    python3 bench/privacy.py --tasks mnist --rounds 50 --noise 0.5,1,2,4,8 --audit-runs 10000 --audit-noise 0.5,1,2   # bigger

Simulated in-process with the core's own code, the code the server and the browser run:
``local_train`` on each volunteer's shard, ``l2_clip`` (the volunteer's clip), ``DPSum``
(the server's release, noise from the OS's CSPRNG) and the server's accountant. The
non-private baseline is FedAvg through the core's ``fedavg`` rule, on the same volunteers,
the same selections and the same initial model, in the same run.

Volunteers are users holding ``--per-user`` examples each of a task's training split: MNIST's
8,000 training digits (8 a user), or the 455 training rows of breast cancer (scikit-learn's
CSV, the task's 20% holdout kept for the test; one row a user), standardised with the
training rows' mean and std as a server fixes them from federated statistics. Task settings
left out of the command line take the task's own defaults (``DEFAULTS``). Each
round selects each user independently with probability ``q = m / N`` (Poisson), so both
epsilons printed are claims this simulation satisfies: ``sampling none`` (no
amplification, webfl's default) and ``sampling poisson``.

The audit (Jagielski et al. 2020; Nasr et al. 2021): many short DP runs; in a random half a
canary volunteer takes part in every round with an update of norm ``C`` along a secret
random direction. The test statistic is the final model's movement along that direction.
A threshold is picked on one half of the runs and its false-positive and false-negative
rates are bounded on the other half with Clopper-Pearson intervals (95%), which gives an
empirical lower bound on epsilon that holds with 95% confidence. It must never exceed
the accountant's epsilon: if it did, the mechanism or the accountant would be wrong.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parents[0] / "backend"))  # the working tree's webfl, unless installed or on PYTHONPATH

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from webfl.build.paths import DATASETS_DIR  # noqa: E402
from webfl.core.aggregation import get_aggregator  # noqa: E402
from webfl.core.codecs import Encoded, get_codec  # noqa: E402
from webfl.core.data import Dataset, features, load_npz  # noqa: E402
from webfl.core.evaluation import holdout_split  # noqa: E402
from webfl.core.models import MLP  # noqa: E402
from webfl.core.privacy import AdaptiveClip, DPSum, Mechanism, l2_clip  # noqa: E402
from webfl.core.stats import Standardised, feature_stats, scaling_from_stats  # noqa: E402
from webfl.core.tasks import Kind, get_task  # noqa: E402
from webfl.core.training import TrainConfig, local_train  # noqa: E402
from webfl.server.privacy import Accountant, AccountantKind  # noqa: E402

DELTA = 1e-5
# dp-accounting logs each fractional RDP order it cannot evaluate (and skips it, which only
# loosens epsilon); the tables would drown in it.
logging.getLogger("absl").setLevel(logging.ERROR)


@dataclass
class Federation:
    name: str
    model: MLP | Standardised
    users: list[tuple[np.ndarray, np.ndarray]]  # (features, labels) per user
    test_x: np.ndarray
    test_y: np.ndarray
    config: TrainConfig


@dataclass(frozen=True)
class TaskDefaults:
    """A task's bench settings where the command line gives none."""

    model: str | None  # None: the task's own model
    per_user: int
    local_epochs: int
    lr: float
    clip: float  # against the median delta norm of the first round (see DEFAULTS)
    cohorts: str
    noise: str


DEFAULTS = {
    # C: half the median delta norm, 1.96.
    "mnist": TaskDefaults("softmax", per_user=8, local_epochs=2, lr=0.5, clip=1.0, cohorts="50,200,1000", noise="1,2,4,8"),
    # 455 training rows: one row a user gives the most users, and m=455 is all of them each round.
    # C: about the median delta norm, 2.1 (half of it costs 1.8-3.5 points by clipping alone).
    "breast-cancer": TaskDefaults(None, per_user=1, local_epochs=1, lr=1.0, clip=2.0,
                                  cohorts="25,100,455", noise="0,0.5,1,2,4,8"),
}


def for_task(args: argparse.Namespace, name: str) -> argparse.Namespace:
    """``args`` with ``name``'s defaults in place of the task settings the command line left out."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    return argparse.Namespace(**{**vars(DEFAULTS[name]), **given})


def load(name: str, args) -> Federation:
    task = get_task(name, args.model)
    if task.kind is Kind.TABULAR:
        rows = task.parse_csv((DATASETS_DIR / f"{name}.csv").read_bytes())
        train_idx, test_idx = holdout_split(len(rows), task.holdout, args.seed)
        train, test = rows.take(train_idx), rows.take(test_idx)
        # The standardisation a server fixes from its volunteers' feature statistics before round 1.
        task = task.with_scaling(*scaling_from_stats(feature_stats(train.x)))
    else:
        path = DATASETS_DIR / f"{name}.npz"
        train, test = load_npz(path, "train"), load_npz(path, "test")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(train))
    n_users = len(train) // args.per_user
    users = []
    for idx in np.split(order[: n_users * args.per_user], n_users):
        shard: Dataset = train.take(idx)
        users.append((features(shard.x), shard.y))
    config = TrainConfig(epochs=args.local_epochs, batch_size=args.per_user, lr=args.lr, seed=0)
    return Federation(name, task.build_model(), users, features(test.x), test.y, config)


def deltas(fed: Federation, params: np.ndarray, chosen: np.ndarray, round_: int):
    for i in chosen:
        x, y = fed.users[i]
        config = TrainConfig(fed.config.epochs, fed.config.batch_size, fed.config.lr, seed=round_ * 100_003 + int(i))
        yield local_train(fed.model, params, x, y, config).params - params, len(y)


def run(fed: Federation, selections: list[np.ndarray], m: int, z: float | None, clip: float, adaptive: bool = False) -> tuple[float, float]:
    """Test accuracy and the last clip norm after the rounds; ``z`` None: non-private FedAvg."""
    params = fed.model.init(0)
    none = get_codec("none")
    rule = get_aggregator("fedavg")
    # One release per run, as the engine will hold it: adaptive clipping's norm carries over.
    release = None if z is None else DPSum(
        clip=AdaptiveClip(clip, count_noise=m / 20) if adaptive else clip, noise_multiplier=z, expected_cohort=m)
    for t, chosen in enumerate(selections):
        if release is None:
            rule.begin(params.size, len(chosen))
            for d, n in deltas(fed, params, chosen, t):
                rule.add(none, Encoded({}, (d,)), float(n))
            params = params + rule.finish()
        else:
            c = release.clip
            release.begin(params.size)
            for d, _ in deltas(fed, params, chosen, t):
                clipped, norm = l2_clip(d, c)  # what the volunteer does before its codec
                release.add(clipped, norm > c)
            params = params + release.finish().delta
    return fed.model.evaluate(params, fed.test_x, fed.test_y)[1], (release.clip if release else math.nan)


def epsilon(z: float, rounds: int, q: float | None) -> float | None:
    acc = Accountant(AccountantKind.RDP)
    for _ in range(rounds):
        acc.charge(Mechanism(z), q)
    return acc.epsilon(DELTA)


def fmt_eps(e: float | None) -> str:
    return "∞" if e is None else f"{e:.3g}"


def accuracy_table(fed: Federation, args) -> None:
    n_users = len(fed.users)
    rng = np.random.default_rng(args.seed + 1)
    print(f"\n#### Accuracy against epsilon: {fed.name} {args.model or 'built-in model'}, {n_users} users of {args.per_user} examples,"
          f" {args.rounds} rounds, E={args.local_epochs}, lr={args.lr}, C={args.clip}, delta={DELTA:g}\n")
    cohorts = [int(c) for c in args.cohorts.split(",")]
    zs = [float(z) for z in args.noise.split(",")]
    header = "| setting | ε (sampling none) | " + " | ".join(f"ε (poisson, m={m})" for m in cohorts) + " | " + \
        " | ".join(f"accuracy m={m}" for m in cohorts) + " |"
    print(header)
    print("|" + "---|" * (2 + 2 * len(cohorts)))
    selections = {m: [np.flatnonzero(rng.random(n_users) < m / n_users) for _ in range(args.rounds)] for m in cohorts}
    rows: list[tuple[str, float | None, float, bool]] = [("FedAvg, not private", None, args.clip, False)]
    rows += [(f"DP, z={z:g}", z, args.clip, False) for z in zs]
    rows += [(f"DP, z={z:g}, adaptive C from 0.1", z, 0.1, True) for z in (float(z) for z in args.adaptive.split(",") if z)]
    baseline: list[float] = []
    smallest: list[str] = []
    for label, z, clip, adaptive in rows:
        started = time.monotonic()
        results = [run(fed, selections[m], m, z, clip, adaptive) for m in cohorts]
        accs = [a for a, _ in results]
        if z is None:
            baseline = accs
        elif not adaptive:
            ok = [m for m, a, b in zip(cohorts, accs, baseline) if b - a <= 0.02]
            smallest.append(f"z={z:g} (ε {fmt_eps(epsilon(z, args.rounds, None))}): "
                            + (f"m >= {ok[0]}" if ok else f"more than {cohorts[-1]}"))
        if adaptive:
            label += " (last C: " + ", ".join(f"{c:.2f}" for _, c in results) + ")"
        eps_none = "–" if z is None else fmt_eps(epsilon(z, args.rounds, None))
        eps_poisson = ["–" if z is None else fmt_eps(epsilon(z, args.rounds, m / n_users)) for m in cohorts]
        print(f"| {label} | {eps_none} | " + " | ".join(eps_poisson) + " | " + " | ".join(f"{a:.4f}" for a in accs) + " |",
              flush=True)
        print(f"<!-- {label}: {time.monotonic() - started:.1f} s -->", file=sys.stderr)
    print("\nCohort needed to stay within 2 points of non-private FedAvg (sampling none): " + "; ".join(smallest) + ".")
    print("The noise on the mean update is z·C/m per coordinate: at a fixed z (so a fixed ε without sampling)"
          " the cohort m is what buys accuracy back.")


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    return 1.0 if k >= n else float(stats.beta.ppf(1 - alpha, k + 1, n - k))


def eps_from_rates(fpr: float, fnr: float, delta: float) -> float:
    """The epsilon any (eps, delta)-DP mechanism must have for a test with these error rates."""
    out = 0.0
    for a, b in ((fpr, fnr), (fnr, fpr)):
        if a > 0 and 1 - delta - b > 0:
            out = max(out, math.log((1 - delta - b) / a))
    return out


def bounded_eps(scores: np.ndarray, present: np.ndarray, t: float) -> tuple[float, int, int, int, int]:
    """Epsilon from the Clopper-Pearson upper bounds (97.5% each, 95% jointly) of both error rates at ``t``."""
    fp, n0 = int(np.sum(scores[~present] > t)), int(np.sum(~present))
    fn, n1 = int(np.sum(scores[present] <= t)), int(np.sum(present))
    return eps_from_rates(clopper_pearson_upper(fp, n0, 0.025), clopper_pearson_upper(fn, n1, 0.025), DELTA), fp, n0, fn, n1


def audit(fed: Federation, args) -> None:
    m, rounds, runs = args.audit_cohort, args.audit_rounds, args.audit_runs
    print(f"\n#### Empirical audit: {fed.name}, {runs} runs of {rounds} rounds each, m={m}, C={args.clip}, delta={DELTA:g}\n")
    print("| z | canary runs | threshold | FP / no canary | FN / canary | empirical ε (95%) | accountant ε (RDP) | within | seconds |")
    print("|---:|---:|---:|---:|---:|---:|---:|:---:|---:|")
    failed = False
    for z in (float(z) for z in args.audit_noise.split(",")):
        failed |= not audit_one(fed, args, z)
    if failed:
        raise SystemExit("an empirical lower bound exceeds the accountant's epsilon: the mechanism or the accountant is wrong")


def audit_one(fed: Federation, args, z: float) -> bool:
    n_users = len(fed.users)
    m, rounds, runs = args.audit_cohort, args.audit_rounds, args.audit_runs
    rng = np.random.default_rng([args.seed + 2, int(z * 1000)])
    size = fed.model.size
    direction = rng.standard_normal(size)
    direction /= np.linalg.norm(direction)
    canary = (direction * args.clip).astype(np.float32)  # norm C: the most one volunteer may move the sum
    started = time.monotonic()
    scores, present = np.empty(runs), rng.random(runs) < 0.5
    for r in range(runs):
        params0 = fed.model.init(0)
        params = params0
        for t in range(rounds):
            release = DPSum(clip=args.clip, noise_multiplier=z, expected_cohort=m)
            release.begin(size)
            chosen = rng.choice(n_users, m, replace=False)
            for d, _ in deltas(fed, params, chosen, t + r * rounds):
                clipped, norm = l2_clip(d, args.clip)
                release.add(clipped, norm > args.clip)
            if present[r]:
                release.add(canary, True)
            params = params + release.finish().delta
        scores[r] = float((params - params0).astype(np.float64) @ direction)
    elapsed = time.monotonic() - started
    # Choose the threshold on the first half, bound the error rates on the second (no peeking).
    half = runs // 2
    pick, test = slice(0, half), slice(half, runs)
    # Picked by the same bounded estimate: raw rates would favour thresholds out in the tails
    # where a count of 0 or 1 says little.
    best_t = max(np.unique(scores[pick]), key=lambda t: bounded_eps(scores[pick], present[pick], t)[0])
    eps_lb, fp, n0, fn, n1 = bounded_eps(scores[test], present[test], best_t)
    eps_acc = epsilon(z, rounds, None)  # the canary joins every round: no amplification claimed
    ok = eps_acc is None or eps_lb <= eps_acc
    print(f"| {z:g} | {int(present.sum())} | {best_t:.3g} | {fp} / {n0} | {fn} / {n1} | {eps_lb:.3f} | {fmt_eps(eps_acc)}"
          f" | {'yes' if ok else 'NO'} | {elapsed:.0f} |", flush=True)
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Task settings: None takes each task's own default (DEFAULTS).
    p.add_argument("--tasks", default=",".join(DEFAULTS), help="tasks measured, comma-separated")
    p.add_argument("--model", choices=["softmax", "2nn"], help="MNIST's model (default softmax)")
    p.add_argument("--per-user", type=int, help="examples each simulated user holds")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--local-epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--clip", type=float, help="fixed clip norm (each task's default: see DEFAULTS)")
    p.add_argument("--cohorts", help="expected users per round, comma-separated")
    p.add_argument("--noise", help="noise multipliers z, comma-separated")
    p.add_argument("--adaptive", default="2", help="noise multipliers of the adaptive-clipping rows")
    p.add_argument("--audit-runs", type=int, default=1500)
    p.add_argument("--audit-rounds", type=int, default=2)
    p.add_argument("--audit-cohort", type=int, default=10)
    p.add_argument("--audit-noise", default="0.5,1", help="noise multipliers audited, comma-separated")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-audit", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    tasks = args.tasks.split(",")
    if unknown := [name for name in tasks if name not in DEFAULTS]:
        p.error(f"--tasks: unknown task {unknown[0]!r}; measured: {', '.join(DEFAULTS)}")
    started = time.monotonic()
    for name in tasks:
        task_args = for_task(args, name)
        fed = load(name, task_args)
        if not args.skip_accuracy:
            accuracy_table(fed, task_args)
        if not args.skip_audit:
            audit(fed, task_args)
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
