"""SecAgg+: bytes and time per volunteer and stage, accuracy against plain FedAvg, and recovery.

Part 1, the core alone. For cohorts of 10, 50 and 100 volunteers with a 2NN-sized update
(199,210 values), q = 8 bits and the server's default degree k (``default_neighbors``,
sized for 30% dropout; threshold t = floor(k/2) + 1), one in-process round
(``tests/secagg_round.py``: real X25519, AES-GCM, Shamir, masks) with 10% dropout after
masking. Baselines measured in the same run: a plain ``q8`` upload (its bytes, its encode
time on the volunteer and its decode-and-fold on the server). Then the odds that a round
can be unmasked for several degrees and dropout rates (graph and dropouts drawn at random,
no crypto needed). With ``--pyodide``, the volunteer's masking step in Pyodide (headless
Chromium) against native, same code, same run.

Byte counts are the payloads (keys, sealed shares, packed vector, revealed shares, ids as
4 bytes).

Part 2, through the round engine (``tests/secagg_net.py``: the real ``RoundEngine`` and
real core volunteers, frames routed as the socket routes them, no sockets), on MNIST with
the softmax model (7,850 values): whole frames per volunteer and stage against a plain q8
round; volunteer and server time per stage; accuracy after the same rounds against plain
FedAvg (and the per-coordinate range factor); and rounds committed when 10%, 30% or a
threshold's worth of the cohort vanishes after masking.

    .venv/bin/python bench/secagg.py [--size 199210] [--cohorts 10 50 100] [--pyodide]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "browser")]
from secagg_round import Round  # noqa: E402

from webfl.core.codecs import get_codec  # noqa: E402
from webfl.core.secagg import NeighbourGraph, Quantizer, default_degree  # noqa: E402
from webfl.server.secagg import default_neighbors  # noqa: E402

ID = 4  # bytes of a volunteer id on the wire


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def recoverable(graph: NeighbourGraph, answering: set[int], t: int) -> bool:
    return all(len(answering & set(graph.neighbours(u))) >= t for u in range(graph.n))


def round_draw(n: int, k: int, t: int, size: int, dropout: float) -> tuple[Round, set[int], int]:
    """A round whose random dropout leaves it recoverable, and how many draws that took."""
    for attempt in range(1, 101):
        r = Round(n, k, t, size=size, seed=attempt)
        dropped = set(r.rng.choice(n, round(dropout * n), replace=False).tolist())
        if recoverable(r.setup.graph, set(range(n)) - dropped, t):
            return r, dropped, attempt
    raise SystemExit(f"no recoverable draw for n={n} k={k} t={t}")


def measure(n: int, size: int, dropout: float) -> dict:
    k = default_neighbors(n)
    t = k // 2 + 1
    r, dropped, draws = round_draw(n, k, t, size, dropout)
    _, advertise = timed(r.advertise)
    _, share = timed(r.share)
    _, mask = timed(r.mask)
    _, upload = timed(r.upload, dropped)
    reveals, reveal = timed(r.reveals)
    total, finish = timed(r.unmasker.finish, reveals)
    assert np.array_equal(total, r.expected()), "the unmasked sum is wrong"
    survivors = len(r.survivors)

    codec, rng = get_codec("q8"), np.random.default_rng(0)
    encs, enc_times = [], []
    for u in range(min(n, 10)):
        enc, dt = timed(codec.encode, r.updates[u].astype(np.float32), rng)
        encs.append(enc)
        enc_times.append(dt)
    acc = np.zeros(size, np.float32)
    fold = statistics.median(timed(codec.accumulate, acc, 1.0, e)[1] for e in encs)

    # Error of the decoded sum against the exact sum of the clipped updates, and the same for q8.
    clipped = [r.updates[u] * min(1.0, 1.0 / np.linalg.norm(r.updates[u])) for u in sorted(r.survivors)]
    exact = np.sum(clipped, axis=0)
    secagg_err = np.linalg.norm(r.quant.decode_sum(total, survivors) - exact) / np.linalg.norm(exact)
    fine = Quantizer.for_cohort(1.0, 8, n, bound=4 / np.sqrt(size))
    fine_rng = np.random.default_rng(2)
    fine_sum = np.sum([fine.quantize(c, fine_rng) for c in clipped], axis=0, dtype=np.uint64).astype(np.uint32)
    fine_err = np.linalg.norm(fine.decode_sum(fine_sum, survivors) - exact) / np.linalg.norm(exact)
    q8_sum = np.sum([codec.decode(codec.encode(c.astype(np.float32), rng), size) for c in clipped], axis=0)
    q8_err = np.linalg.norm(q8_sum - exact) / np.linalg.norm(exact)

    deg = statistics.mean(len(c.client.neighbours) for c in r.clients.values())
    sealed = statistics.mean(sum(len(s) for s in out.values()) / len(out) for out in r.sealed.values())
    revealed = statistics.mean(len(rv.self_seeds) + len(rv.secret_keys) for rv in reveals.values())
    return {
        "n": n, "k": k, "t": t, "bits": r.setup.bits, "dropped": len(dropped), "draws": draws,
        "fp32": 4 * size, "q8": encs[0].nbytes, "masked": len(r.uploads[0]),
        "advertise_up": 64, "advertise_down": deg * (ID + 64),
        "share_up": deg * (ID + sealed), "share_down": deg * (ID + sealed),
        "unmask_down": survivors * ID, "unmask_up": revealed * (ID + 44),
        "t_advertise": advertise / n, "t_share": share / n, "t_mask": mask / n, "t_reveal": reveal / survivors,
        "t_q8_encode": statistics.median(enc_times),
        "secagg_err": secagg_err, "fine_err": fine_err, "q8_err": q8_err,
        "t_server_add": upload / survivors, "t_server_finish": finish, "t_server_q8_fold": fold,
    }


def recovery_odds(n: int, k: int, t: int, dropout: float, trials: int = 200) -> float:
    rng = np.random.default_rng(n * 1000 + k)
    ok = 0
    for _ in range(trials):
        graph = NeighbourGraph(n, k, rng.bytes(32))
        dropped = set(rng.choice(n, round(dropout * n), replace=False).tolist())
        ok += recoverable(graph, set(range(n)) - dropped, t)
    return ok / trials


PYODIDE_CODE = """
import hashlib, json, time
import numpy as np
from webfl.core.codecs import get_codec
from webfl.core.secagg import Quantizer, pack_bits, expand
from webfl.core.secagg.masking import mask

def best(fn, reps=5):
    times = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return float(np.median(times))

n, size, k = 100, SIZE, DEGREE
quant = Quantizer.for_cohort(1.0, 8, n)
x = np.random.default_rng(0).normal(0, 0.02, size)
seeds = {v: hashlib.sha256(bytes([v])).digest() for v in range(1, k + 1)}
levels = quant.quantize(x)
codec, rng = get_codec("q8"), np.random.default_rng(1)
result = json.dumps({
    "expand": best(lambda: expand(bytes(32), b"pair", size, quant.bits)),
    "mask": best(lambda: pack_bits(mask(quant.quantize(x, rng), quant.bits, 0, bytes(32), seeds), quant.bits)),
    "q8": best(lambda: codec.encode(x.astype(np.float32), rng)),
})
result
"""


def pyodide_rows(size: int) -> tuple[dict, dict]:
    from playwright.sync_api import sync_playwright

    from browser_helpers import CHROMIUM, CHROMIUM_ARGS, run_in_pyodide
    from servers import start_server

    code = PYODIDE_CODE.replace("SIZE", str(size)).replace("DEGREE", str(default_neighbors(100)))
    scope: dict = {}
    exec(code, scope)
    native = json.loads(scope["result"])
    with tempfile.TemporaryDirectory() as data:
        server = start_server(Path(data) / "data")
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                browser_out = json.loads(run_in_pyodide(browser, server.url, code))
                browser.close()
        finally:
            server.stop()
    return native, browser_out


# -- part 2: through the round engine ---------------------------------------------------

STAGES = [("sa_keys", "sa_roster", "advertise"), ("sa_shares", "sa_inbox", "share"), ("sa_masked", None, "masked upload"),
          ("sa_reveal", "sa_unmask", "unmask")]


def mnist(n: int, seed: int):
    from webfl.build.paths import DATASETS_DIR
    from webfl.core.data import load_npz, partition

    train, test = load_npz(DATASETS_DIR / "mnist.npz", "train"), load_npz(DATASETS_DIR / "mnist.npz", "test")
    shards = [train.take(idx) for idx in partition(train.y, n, "iid", seed)]
    return shards, test.take(np.arange(2000))


def engine_run(n: int, body: dict, vanish: float = 0.0, seed: int = 0) -> dict:
    """One run through the engine; ``vanish``: that fraction of the cohort leaves after masking."""
    import asyncio

    from secagg_net import Net

    from webfl.core.secagg.runtime import SecAggVolunteer
    from webfl.server.secagg import SecAggSession

    timings: dict[str, float] = {"mask": 0.0, "unmask": 0.0}
    real_mask, real_finish = SecAggVolunteer.masked, SecAggSession.finish

    def masked(self, levels):
        began = time.perf_counter()
        try:
            return real_mask(self, levels)
        finally:
            timings["mask"] += time.perf_counter() - began

    def finish(self):
        began = time.perf_counter()
        try:
            return real_finish(self)
        finally:
            timings["unmask"] += time.perf_counter() - began

    shards, test = mnist(n, seed)
    SecAggVolunteer.masked, SecAggSession.finish = masked, finish
    try:
        with tempfile.TemporaryDirectory() as tmp:
            net = Net(Path(tmp), n, seed=seed, shards=shards, test=test)
            gone = np.random.default_rng(seed).choice(n, round(vanish * n), replace=False)
            net.vanish = {f"v{i}": "sa_masked" for i in gone}
            began = time.perf_counter()
            asyncio.run(net.run(body, until_rounds=body["rounds"], timeout=180))
            wall = time.perf_counter() - began
            history = [(r.accuracy, r.participants) for r in net.engine.history]
            abandoned = [a.why for a in net.abandoned()]
    finally:
        SecAggVolunteer.masked, SecAggSession.finish = real_mask, real_finish
    return {"history": history, "abandoned": abandoned, "up": net.up, "down": net.down, "server_s": net.server_s,
            "client_s": net.client_s, "timings": timings, "wall": wall}


def base_body(n: int, rounds: int) -> dict:
    return {"rounds": rounds, "clients_per_round": n, "min_updates": max(2, n // 2), "deadline_s": 120, "select_timeout_s": 5,
            "local_epochs": 1, "batch_size": 32, "lr": 0.1}


def engine_tables(cohorts: list[int], clip: float, rounds: int, trials: int) -> None:
    size = 7850
    print(f"\n## Through the engine: whole frames per volunteer per stage (MNIST softmax, {size:,} values, q = 8, C = {clip:g})\n")
    print("| n | k | t | advertise up/down | share up/down | masked upload | plain q8 update | masked / q8 | unmask down/up |"
          " total up vs q8 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    times = []
    for n in cohorts:
        secagg = engine_run(n, {**base_body(n, 1), "secagg": {"clip": clip}})
        plain = engine_run(n, {**base_body(n, 1), "codec": "q8"})
        k = min(default_neighbors(n), n - 1)
        per = {kind: b / n for kind, b in {**secagg["up"], **secagg["down"]}.items()}
        q8 = plain["up"]["update"] / n
        cells = [f"{per.get(up, 0):,.0f} / {per.get(down, 0):,.0f}" if down else f"{per.get(up, 0):,.0f}" for up, down, _ in STAGES]
        total = sum(per.get(up, 0) for up, _, _ in STAGES)
        print(f"| {n} | {k} | {k // 2 + 1} | {cells[0]} | {cells[1]} | {cells[2]} | {q8:,.0f} | {per['sa_masked'] / q8:.2f}x"
              f" | {cells[3]} | {total / q8:.2f}x |")
        times.append((n, secagg, plain))
    print("\n## Through the engine: time per stage (ms; volunteer per volunteer, crypto included; server per frame or per round)\n")
    print("| n | volunteer advertise | share | mask (quantize, masks, pack) | reveal | server keys | shares | fold a masked upload |"
          " fold a plain q8 update | fold / q8 fold | unmask the sum |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, r, plain in times:
        c, srv = r["client_s"], r["server_s"]
        fold, q8fold = srv["sa_masked"] / n, plain["server_s"]["update"] / n
        print(f"| {n} | {ms(c['task'] / n)} | {ms(c['sa_roster'] / n)} | {ms(r['timings']['mask'] / n)} | {ms(c['sa_unmask'] / n)}"
              f" | {ms(srv['sa_keys'] / n)} | {ms(srv['sa_shares'] / n)} | {ms(fold)} | {ms(q8fold)} | {fold / q8fold:.1f}x"
              f" | {ms(r['timings']['unmask'])} |")

    n = cohorts[0]
    print(f"\n## Accuracy after {rounds} rounds, n = {n}, against plain FedAvg in the same run (MNIST test, 2,000 digits)\n")
    print("| aggregation | accuracy by round | final |\n|---|---|---:|")
    plain = engine_run(n, base_body(n, rounds))
    runs = [("plain FedAvg (fp32 updates, example-weighted)", plain)]
    for factor in (2, 4, 8):
        bound = factor * clip / np.sqrt(size)
        runs.append((f"SecAgg, C = {clip:g}, range {factor} C/sqrt(d)", engine_run(n, {**base_body(n, rounds), "secagg": {"clip": clip, "range": bound}})))
    for label, r in runs:
        acc = [a for a, _ in r["history"]]
        print(f"| {label} | {', '.join(f'{a:.3f}' for a in acc)} | {acc[-1]:.3f} |")

    print(f"\n## Recovery: rounds committed when a fraction of the cohort vanishes after masking ({trials} trials each)\n")
    print("| n | k | t | 10% | 30% | k - t vanish (never more than the threshold allows) | (k - t)/k of n vanish (the threshold, on average) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in cohorts[:2]:
        k = min(default_neighbors(n), n - 1)
        t = k // 2 + 1
        cells = []
        for fraction in (0.1, 0.3, (k - t) / n, (k - t) / k):
            ok = sum(bool(engine_run(n, {**base_body(n, 1), "secagg": {"clip": clip}}, vanish=fraction, seed=s)["history"])
                     for s in range(trials))
            cells.append(f"{ok}/{trials} ({round(fraction * n)} of {n})")
        print(f"| {n} | {k} | {t} | {' | '.join(cells)} |")


def ms(s: float) -> str:
    return f"{s * 1e3:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=199_210)
    parser.add_argument("--cohorts", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--pyodide", action="store_true")
    parser.add_argument("--clip", type=float, default=5.0, help="part 2: the volunteers' clip norm")
    parser.add_argument("--rounds", type=int, default=5, help="part 2: rounds of the accuracy comparison")
    parser.add_argument("--trials", type=int, default=3, help="part 2: rounds per recovery cell")
    parser.add_argument("--skip-core", action="store_true", help="part 2 only")
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    if args.skip_core:
        engine_tables(args.cohorts, args.clip, args.rounds, args.trials)
        return 0
    rows = [measure(n, args.size, args.dropout) for n in args.cohorts]
    print(f"## Bytes per volunteer per stage ({args.size:,} values, q = 8, {args.dropout:.0%} dropout after masking)\n")
    print("| n | k | t | b | advertise up/down | share up/down | masked upload | plain q8 | fp32 | unmask down/up | total up vs q8 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        up = r["advertise_up"] + r["share_up"] + r["masked"] + r["unmask_up"]
        print(
            f"| {r['n']} | {r['k']} | {r['t']} | {r['bits']} | {r['advertise_up']} / {r['advertise_down']:.0f} "
            f"| {r['share_up']:.0f} / {r['share_down']:.0f} | {r['masked']:,} | {r['q8']:,} | {r['fp32']:,} "
            f"| {r['unmask_down']} / {r['unmask_up']:.0f} | {up / r['q8']:.2f}x |"
        )
    print("\n## Time per stage, native (ms; volunteer figures are per volunteer, server per round)\n")
    print("| n | advertise | share | mask | q8 encode | mask / q8 | reveal | server add (each) | q8 fold (each) | add / fold | server unmask |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['n']} | {ms(r['t_advertise'])} | {ms(r['t_share'])} | {ms(r['t_mask'])} | {ms(r['t_q8_encode'])} "
            f"| {r['t_mask'] / r['t_q8_encode']:.1f}x | {ms(r['t_reveal'])} | {ms(r['t_server_add'])} "
            f"| {ms(r['t_server_q8_fold'])} | {r['t_server_add'] / r['t_server_q8_fold']:.1f}x | {ms(r['t_server_finish'])} |"
        )
    print("\n## Error of the decoded sum (relative L2, against the exact sum of the clipped float updates)\n")
    print("| n | SecAgg q = 8 over [-C, C] | over [-4C/sqrt(d), 4C/sqrt(d)] | plain q8 (per-block range) |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']} | {r['secagg_err']:.3f} | {r['fine_err']:.3f} | {r['q8_err']:.3f} |")
    drawn = ", ".join(f"n={r['n']}: {r['dropped']} dropped, draw {r['draws']}" for r in rows)
    print(f"\n(the first recoverable random dropout was used: {drawn})")

    print("\n## Odds that a round unmasks (200 random graphs and dropout sets each; the last k of each n is the server's default)\n")
    print("| n | k | t | 10% dropout | 30% dropout |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.cohorts:
        for k in sorted({default_degree(n), 2 * default_degree(n), default_neighbors(n)}):
            t = k // 2 + 1
            print(f"| {n} | {k} | {t} | {recovery_odds(n, k, t, 0.1):.0%} | {recovery_odds(n, k, t, 0.3):.0%} |")

    engine_tables(args.cohorts, args.clip, args.rounds, args.trials)
    if args.pyodide:
        native, browser = pyodide_rows(args.size)
        k = default_neighbors(100)
        print(f"\n## Volunteer masking in Pyodide 0.27.7 vs native ({args.size:,} values, n = 100, k = {k}, the default; ms)\n")
        print("| step | native | Pyodide | Pyodide / native |\n|---|---:|---:|---:|")
        for key, label in [("expand", "one PRG expansion (SHAKE-256)"), ("mask", f"quantize + self and {k} pair masks + pack"), ("q8", "plain q8 encode (baseline)")]:
            print(f"| {label} | {ms(native[key])} | {ms(browser[key])} | {browser[key] / native[key]:.1f}x |")
        print(f"\nmasking vs plain q8 encode: native {native['mask'] / native['q8']:.1f}x, Pyodide {browser['mask'] / browser['q8']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
