"""SecAgg's core in Pyodide (real Chromium): the same bytes as natively, so browser masks cancel.

The page loads Pyodide, NumPy and the core wheel from a real server exactly as the
worker does, then runs the core's known-answer vectors and a whole volunteer-side mask
(quantize, self and pair masks, bit-packing) from fixed inputs, whose digest must equal
the native one, then a whole no-dropout round of the volunteers' and the server's stages.
Shamir sharing draws from the OS in Pyodide too (crypto.getRandomValues).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from browser_helpers import run_in_pyodide

pytestmark = pytest.mark.browser

# Runs in Pyodide and natively; ``result`` (its last line, so runPython returns it) is JSON.
CODE = """
import hashlib, json, os
import numpy as np
from webfl.core.secagg import Quantizer, combine, pack_bits, split, vectors
from webfl.core.secagg.masking import mask

quant = Quantizer.for_cohort(1.0, 8, 50)
x = np.sin(np.arange(199_210) * 0.37) * 0.002
levels = quant.quantize(x)
seeds = {v: hashlib.sha256(bytes([v])).digest() for v in (1, 4, 9, 17, 30, 44)}
packed = pack_bits(mask(levels, quant.bits, 20, bytes(range(32)), seeds), quant.bits)
secret = os.urandom(32)
shares = split([secret], [3, 8, 11, 12], 3)

# A whole round of the core's stages with no dropout. The runtime's part is stood in
# for: each pair's "X25519 secret" is a hash of the pair, and frames travel unsealed.
from webfl.core.secagg import NeighbourGraph, PublicKeys, RoundSetup, SecAggClient, Unmasker
n, size = 6, 1000
setup = RoundSetup(9, size, quant.bits, 3, NeighbourGraph(n, 4, bytes(32)))
pair = lambda u, v: hashlib.sha256(bytes([min(u, v), max(u, v)])).digest()
clients = {u: SecAggClient(u, setup) for u in range(n)}
keys = {u: PublicKeys(bytes([u]) * 32, bytes([u + 100]) * 32) for u in range(n)}
for u, c in clients.items():
    c.advertise(keys[u], hashlib.sha256(b"sk" + bytes([u])).digest())
out = {u: c.share({v: keys[v] for v in c.neighbours}, {v: pair(u, v) for v in c.neighbours}) for u, c in clients.items()}
rng = np.random.default_rng(0)
levels = {u: quant.quantize(rng.normal(0, 0.01, size), rng) for u in range(n)}
# No one drops, so the unmasker never rebuilds a masking key and needs no X25519 (None).
unmasker = Unmasker(setup, None, keys, {u: c.neighbours for u, c in clients.items()})
for u, c in clients.items():
    unmasker.add(u, c.mask(levels[u], {v: out[v][u].plaintext for v in c.neighbours}, {v: pair(u, v) for v in c.neighbours}))
survivors = unmasker.close()
total = unmasker.finish({u: clients[u].unmask(survivors) for u in survivors})
round_ok = bool((total == np.sum(list(levels.values()), axis=0)).all())
result = json.dumps({
    "failed": vectors.check(),
    "masked_sha256": hashlib.sha256(packed).hexdigest(),
    "bits": quant.bits,
    "shamir_ok": combine([8, 11, 12], shares[1:], 3) == [secret],
    "round_ok": round_ok,
})
result
"""


def run_natively(code: str) -> dict:
    scope: dict = {}
    exec(code, scope)
    return json.loads(scope["result"])


def test_the_secagg_core_gives_the_same_bytes_in_pyodide_as_natively(browser, serve):
    in_browser = json.loads(run_in_pyodide(browser, serve().url, CODE))
    native = run_natively(CODE)
    assert in_browser["failed"] == [] and native["failed"] == []
    assert in_browser["shamir_ok"] and native["shamir_ok"]
    assert in_browser["round_ok"] and native["round_ok"]
    assert in_browser["bits"] == native["bits"] == 14
    assert in_browser["masked_sha256"] == native["masked_sha256"]


def test_three_tabs_and_python_volunteers_commit_a_secure_aggregation_round(context, serve, tmp_path):
    """Three Chromium tabs speak every SecAgg stage: X25519 and AES-GCM through WebCrypto in
    the worker, the arithmetic in Pyodide; two simulated Python volunteers (``cryptography``)
    share the same round, so each runtime's keys, shares and masks must cancel the other's.
    The server unmasks the five's sum and commits it."""
    from playwright.sync_api import expect

    from browser_helpers import join, wait_state

    server = serve()
    tabs = [context.new_page() for _ in range(3)]
    for tab in tabs:
        join(tab, server.url, wait=False)
    for tab in tabs:
        wait_state(tab, "idle")
    sim_log = (tmp_path / "simulate.log").open("w")
    sim = subprocess.Popen(
        [sys.executable, "-m", "webfl.cli", "simulate", "--server", server.url, "--clients", "2", "--timeout-s", "240"],
        stdout=sim_log, stderr=subprocess.STDOUT,
    )
    try:
        server.wait_for(lambda s: s["connected"] == 5, timeout=60, what="the two Python volunteers")
        body = {"rounds": 1, "clients_per_round": 5, "min_updates": 5, "local_epochs": 1, "deadline_s": 90, "select_timeout_s": 30,
                "secagg": {"clip": 2.0, "stage_s": 30}}
        code, answer = server.api("POST", "/api/rounds", body)
        assert code == 202, answer
        status = server.wait_for(lambda s: s["history"] or (s["run"] and not s["run"]["running"]), timeout=180, what="the secagg round")
    finally:
        sim.kill()
        sim.wait()
        sim_log.close()
    (entry,) = status["history"]
    assert entry["participants"] == 5 and entry["accuracy"] > 0.3, entry
    log = server.log()
    assert "secagg round 1: 5 of 5 survivors revealed their shares" in log and "unmasked: 5 survivors" in log
    for tab in tabs:
        expect(tab.get_by_test_id("rounds-done")).to_have_text("1", timeout=30_000)
