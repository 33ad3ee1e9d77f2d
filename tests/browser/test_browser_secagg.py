"""SecAgg's core in Pyodide (real Chromium): the same bytes as natively, so browser masks cancel.

The page loads Pyodide, NumPy and the core wheel from a real server exactly as the
worker does, then runs the core's known-answer vectors and a whole volunteer-side mask
(quantize, self and pair masks, bit-packing) from fixed inputs, whose digest must equal
the native one. Shamir sharing draws from the OS in Pyodide too (crypto.getRandomValues).
"""

from __future__ import annotations

import json

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
result = json.dumps({
    "failed": vectors.check(),
    "masked_sha256": hashlib.sha256(packed).hexdigest(),
    "bits": quant.bits,
    "shamir_ok": combine([8, 11, 12], shares[1:], 3) == [secret],
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
    assert in_browser["bits"] == native["bits"] == 14
    assert in_browser["masked_sha256"] == native["masked_sha256"]
