"""SecAgg+'s core alone (no server yet): bytes and time per volunteer and stage, and recovery odds.

For cohorts of 10, 50 and 100 volunteers with a 2NN-sized update (199,210 values), q = 8
bits and the SecAgg+ degree k ~ log2 n (threshold t = floor(k/2) + 1), one in-process round
(``tests/secagg_round.py``: real X25519, AES-GCM, Shamir, masks) with 10% dropout after
masking. Baselines measured in the same run: a plain ``q8`` upload (its bytes, its encode
time on the volunteer and its decode-and-fold on the server). Then the odds that a round
can be unmasked for several degrees and dropout rates (graph and dropouts drawn at random,
no crypto needed). With ``--pyodide``, the volunteer's masking step in Pyodide (headless
Chromium) against native, same code, same run.

    .venv/bin/python bench/secagg.py [--size 199210] [--cohorts 10 50 100] [--pyodide]

Byte counts are the payloads (keys, sealed shares, packed vector, revealed shares, ids as
4 bytes); the frames' own headers come with the server phase.
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
    k = default_degree(n)
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

n, size, k = 100, SIZE, 7
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

    code = PYODIDE_CODE.replace("SIZE", str(size))
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


def ms(s: float) -> str:
    return f"{s * 1e3:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=199_210)
    parser.add_argument("--cohorts", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--pyodide", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

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

    print("\n## Odds that a round unmasks (200 random graphs and dropout sets each)\n")
    print("| n | k | t | 10% dropout | 30% dropout |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.cohorts:
        for k in sorted({default_degree(n), 2 * default_degree(n), min(n - 1, 4 * default_degree(n))}):
            t = k // 2 + 1
            print(f"| {n} | {k} | {t} | {recovery_odds(n, k, t, 0.1):.0%} | {recovery_odds(n, k, t, 0.3):.0%} |")

    if args.pyodide:
        native, browser = pyodide_rows(args.size)
        print(f"\n## Volunteer masking in Pyodide 0.27.7 vs native ({args.size:,} values, n = 100, k = 7; ms)\n")
        print("| step | native | Pyodide | Pyodide / native |\n|---|---:|---:|---:|")
        for key, label in [("expand", "one PRG expansion (SHAKE-256)"), ("mask", "quantize + self and 7 pair masks + pack"), ("q8", "plain q8 encode (baseline)")]:
            print(f"| {label} | {ms(native[key])} | {ms(browser[key])} | {browser[key] / native[key]:.1f}x |")
        print(f"\nmasking vs plain q8 encode: native {native['mask'] / native['q8']:.1f}x, Pyodide {browser['mask'] / browser['q8']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
