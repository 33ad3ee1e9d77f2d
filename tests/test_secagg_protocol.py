"""A whole SecAgg+ round in process: real X25519 and AES-GCM, the core's clients and unmasker.

The sum the server unmasks must be exactly the integer sum of the survivors' quantized
updates whatever drops out, up to the threshold; beyond it the round is refused with a
clear error and the sum is left as it was. A masked upload must look uniform, and an
unmasked one must not (the statistical test can tell them apart). Every malformed or
misrouted message is refused with a SecAggError.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from webfl.core.secagg import (
    ClientStage,
    PublicKeys,
    Quantizer,
    Reveal,
    SecAggClient,
    SecAggError,
    Unmasker,
    UnmaskerState,
    unpack_bits,
)
from webfl.core.secagg.masking import mask
from webfl.core.secagg.shamir import SHARE_BYTES, split
from webfl.core.secagg.native import open_frame, seal_frame
from webfl.core.secagg.shares import SharePair, frame, header, read
from secagg_round import AGREEMENT, Round

def recoverable(r: Round, dropped: set[int], silent: set[int] = frozenset()) -> bool:
    """Whether each volunteer's secrets have ``t`` holders among the neighbours that answer the reveal."""
    answering = set(r.clients) - dropped - silent
    graph = r.setup.graph
    return all(len(answering & set(graph.neighbours(u))) >= r.setup.threshold for u in r.clients)


# The complete graph for 10 (SecAgg's); for 50 a sparse SecAgg+ graph with t > k/2 whose
# degree survives 30% dropout, and one of degree log2 n at 10%. For each, the dropout
# drawn leaves every secret recoverable (asserted, not assumed).
CASES = [(10, 9, 5, d) for d in (0.0, 0.1, 0.3)] + [(50, 24, 13, d) for d in (0.0, 0.1, 0.3)] + [(50, 6, 4, 0.1)]


@pytest.mark.parametrize(("n", "k", "t", "dropout"), CASES)
def test_the_unmasked_sum_is_the_exact_sum_of_the_survivors_quantized_updates(n, k, t, dropout):
    r = Round(n, k, t, seed=n)
    dropped = set(r.rng.choice(n, round(dropout * n), replace=False).tolist())
    assert recoverable(r, dropped)
    total = r.run(dropped)
    assert r.survivors == set(range(n)) - dropped
    np.testing.assert_array_equal(total, r.expected())
    x = np.sum([r.updates[u] for u in r.survivors], axis=0)
    # Stochastic rounding errs by under a step a coordinate: the sum by under len(S) steps.
    assert np.abs(r.quant.decode_sum(total, len(r.survivors)) - x).max() < len(r.survivors) * 2 / 255


def test_a_dropout_during_unmasking_below_the_threshold_is_tolerated():
    r = Round(10, 9, 5)
    dropped, silent = {2, 7}, {0, 4}  # 8 upload, 6 of them reveal: each secret still has 5 holders
    assert recoverable(r, dropped, silent)
    np.testing.assert_array_equal(r.run(dropped, silent), r.expected())
    assert r.survivors == set(range(10)) - dropped  # the silent ones' updates are in the sum


def test_a_dropout_during_unmasking_beyond_the_threshold_is_refused_and_the_sum_kept():
    r = Round(10, 9, 5)
    r.advertise()
    r.share()
    r.mask()
    r.upload({2, 7, 8})  # 7 survivors
    reveals = r.reveals()
    before = r.unmasker.sum.total.copy()
    few = {u: reveals[u] for u in sorted(reveals)[:4]}
    with pytest.raises(SecAggError, match=r"shares revealed, 5 needed \(too many volunteers dropped during unmasking\)"):
        r.unmasker.finish(few)
    np.testing.assert_array_equal(r.unmasker.sum.total, before)
    assert r.unmasker.state is UnmaskerState.UNMASKING
    # Late reveals bring every secret to 5 holders: the same unmasker now gives the exact sum.
    np.testing.assert_array_equal(r.unmasker.finish({u: reveals[u] for u in sorted(reveals)[:6]}), r.expected())


def chi_square_uniform(values: np.ndarray, bits: int, bins: int = 256) -> tuple[float, float]:
    """Pearson's statistic for "uniform mod 2^bits" over the top 8 bits, and its 0.1% critical value.

    The critical value is the Wilson-Hilferty approximation of the chi-square quantile
    (255 degrees of freedom, z = 3.0902 for 0.999): within 0.1% of the exact 330.52.
    """
    counts = np.bincount((values >> (bits - 8)).astype(np.int64), minlength=bins)
    expected = values.size / bins
    stat = float(((counts - expected) ** 2 / expected).sum())
    df, z = bins - 1, 3.0902
    return stat, df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_a_masked_upload_is_indistinguishable_from_uniform_and_an_unmasked_one_is_not():
    quant = Quantizer.for_cohort(1.0, 8, 10)
    size = 65_536  # 256 values a bin
    x = np.random.default_rng(5).normal(0, 0.003, size)
    levels = quant.quantize(x, np.random.default_rng(6))
    seeds = {v: bytes([v]) * 32 for v in (1, 4, 6)}  # fixed seeds: the test is deterministic
    masked = mask(levels, quant.bits, 3, bytes(range(32)), seeds)
    stat, critical = chi_square_uniform(masked, quant.bits)
    assert critical == pytest.approx(330.52, rel=1e-3)
    assert stat < critical, (stat, critical)
    stat_plain, _ = chi_square_uniform(levels, quant.bits)
    assert stat_plain > critical, (stat_plain, critical)
    # And the pair masks alone would not hide a volunteer: the self mask is what does, so
    # a server that learns the pair seeds still sees noise until the sum is complete.
    stat_pairs_only, _ = chi_square_uniform(mask(levels, quant.bits, 3, bytes(32), {}), quant.bits)
    assert stat_pairs_only < critical


def test_the_upload_is_bit_packed_at_the_modulus_bits():
    r = Round(10, 9, 5, size=1001)
    r.advertise()
    r.share()
    r.mask()
    r.upload(set())
    assert {len(p) for p in r.uploads.values()} == {math.ceil(1001 * r.quant.bits / 8)}
    assert r.quant.bits == 12


# --- hostile input ------------------------------------------------------------------------


def shared_round() -> Round:
    r = Round(10, 4, 3, size=64)
    r.advertise()
    r.share()
    return r


def test_a_tampered_or_misrouted_share_is_refused():
    u = 0
    for case in ("tampered", "for another receiver", "from another sender", "short"):
        r = shared_round()
        v, x = sorted(r.clients[u].client.neighbours)[:2]
        w = next(w for w in r.clients[v].client.neighbours if w != u)
        sealed = {
            "tampered": r.inbox[u][v][:-1] + bytes([r.inbox[u][v][-1] ^ 1]),
            "for another receiver": r.sealed[v][w],
            "from another sender": r.inbox[u][x],
            "short": b"short",
        }[case]
        with pytest.raises(SecAggError, match=f"the share from volunteer {v} does not decrypt"):
            r.clients[u].mask(r.levels[u], {**r.inbox[u], v: sealed})


def test_a_share_framed_for_another_round_or_pair_is_refused_after_decryption():
    pair = SharePair(bytes(range(SHARE_BYTES)), bytes(SHARE_BYTES))
    plaintext = frame(41, 3, 5, pair)
    assert plaintext[:20] == header(41, 3, 5) and read(plaintext, 41, 3, 5) == pair
    for round_id, sender, receiver in [(42, 3, 5), (41, 4, 5), (41, 3, 6)]:
        with pytest.raises(SecAggError, match=f"not framed for round {round_id}, {sender} -> {receiver}"):
            read(plaintext, round_id, sender, receiver)
    with pytest.raises(SecAggError, match="not framed"):
        read(plaintext + b"\0", 41, 3, 5)
    # Sealed, the header is the associated data: for another round it does not even decrypt.
    sealed = seal_frame(bytes(32), plaintext, header(41, 3, 5))
    assert open_frame(bytes(32), sealed, header(41, 3, 5)) == plaintext
    with pytest.raises(ValueError, match="authentication failed"):
        open_frame(bytes(32), sealed, header(42, 3, 5))


def test_stages_run_once_and_in_order():
    r = shared_round()
    fresh = SecAggClient(0, r.setup)
    with pytest.raises(SecAggError, match="at stage advertise, not mask"):
        fresh.mask(r.levels[0], {}, {})
    with pytest.raises(SecAggError, match="at stage mask, not advertise"):
        r.clients[0].advertise()
    r.mask()
    r.upload(set())
    r.clients[0].unmask(r.survivors)
    with pytest.raises(SecAggError, match="at stage done, not unmask"):  # cannot reveal both shares of one neighbour
        r.clients[0].unmask(r.survivors - {sorted(r.clients[0].client.neighbours)[0]})


def test_a_bad_roster_or_secret_is_refused_and_changes_nothing():
    r = Round(10, 4, 3, size=64)
    r.advertise()
    client = SecAggClient(0, r.setup)
    (channel_private, channel), (masking_private, masking) = AGREEMENT.generate(), AGREEMENT.generate()
    client.advertise(PublicKeys(channel, masking), masking_private)
    nbrs = sorted(client.neighbours)
    outsider = next(v for v in range(10) if v not in nbrs and v != 0)
    roster = {v: r.keys[v] for v in nbrs}
    secrets = {v: AGREEMENT.agree(channel_private, r.keys[v].channel) for v in nbrs}
    cases = [
        ({**roster, outsider: r.keys[outsider]}, {**secrets, outsider: bytes(range(32))}, "not neighbours of 0"),
        ({v: roster[v] for v in nbrs[:2]}, {v: secrets[v] for v in nbrs[:2]}, "2 neighbours advertised keys, fewer than the threshold 3"),
        ({**roster, nbrs[1]: roster[nbrs[0]]}, secrets, "repeats a public key"),
        (roster, {v: secrets[v] for v in nbrs[1:]}, "a channel secret is needed for each neighbour"),
        (roster, {**secrets, nbrs[0]: bytes(32)}, f"volunteer {nbrs[0]}'s key agreement gave no usable secret"),
        (roster, {**secrets, nbrs[0]: b"short"}, "no usable secret"),
    ]
    for bad_roster, bad_secrets, match in cases:
        with pytest.raises(SecAggError, match=match):
            client.share(bad_roster, bad_secrets)
        assert client.stage is ClientStage.SHARE
    assert set(client.share(roster, secrets)) == set(nbrs)  # the good roster still goes through
    # The runtime's failed agreement (a low-order peer key) answers no secret, which the core refuses.
    with pytest.raises(SecAggError, match=f"volunteer {nbrs[1]}'s key agreement gave no usable secret"):
        r.clients[0].share({**roster, nbrs[1]: PublicKeys(bytes(32), roster[nbrs[1]].masking)})
    with pytest.raises(SecAggError, match="32 bytes"):
        PublicKeys(b"short", bytes(32))


def test_the_unmasker_refuses_bad_uploads_and_keeps_its_sum():
    r = shared_round()
    packed = r.clients[0].mask(r.levels[0], r.inbox[0])
    r.unmasker.add(0, packed)
    before = r.unmasker.sum.total.copy()
    bits = r.setup.bits
    for u, data, match in [
        (0, packed, "already uploaded"),
        (1, packed[:-1], "take 96 bytes, not 95"),
        (1, packed + b"\0", "not 97"),
        (11, packed, "did not receive enough shares"),
    ]:
        with pytest.raises(SecAggError, match=match):
            r.unmasker.add(u, data)
    np.testing.assert_array_equal(r.unmasker.sum.total, before)
    assert r.unmasker.sum.count == 1 and unpack_bits(packed, bits, 64).shape == (64,)
    r.unmasker.close()
    with pytest.raises(SecAggError, match="upload stage is over"):
        r.unmasker.add(1, packed)


def test_the_unmasker_refuses_reveals_a_volunteer_cannot_hold_or_should_not_give():
    r = shared_round()
    r.mask()
    r.upload({5})
    reveals = r.reveals()
    w = next(u for u in reveals if 5 in r.inbox[u])
    survivor = next(iter(reveals[w].self_seeds))
    before = r.unmasker.sum.total.copy()
    bad_cases = [
        # w hands over the masking key of a survivor: would unmask that survivor's update.
        {**reveals, w: Reveal(reveals[w].self_seeds, {**reveals[w].secret_keys, survivor: reveals[w].self_seeds[survivor]})},
        # a reveal from the dropped volunteer itself
        {**reveals, 5: Reveal({}, {})},
        # a share that is not 44 bytes
        {**reveals, w: Reveal({**reveals[w].self_seeds, survivor: b"\0" * 10}, reveals[w].secret_keys)},
    ]
    for bad, match in zip(bad_cases, ["cannot hold or should not reveal", "did not upload", "wrong length"]):
        with pytest.raises(SecAggError, match=match):
            r.unmasker.finish(bad)
    # A corrupted share is caught: against the other shares, or by landing outside the 24-bit chunks.
    flipped = bytearray(reveals[w].self_seeds[survivor])
    flipped[0] ^= 1
    with pytest.raises(SecAggError, match="inconsistent|do not belong to one secret"):
        r.unmasker.finish({**reveals, w: Reveal({**reveals[w].self_seeds, survivor: bytes(flipped)}, reveals[w].secret_keys)})
    np.testing.assert_array_equal(r.unmasker.sum.total, before)
    np.testing.assert_array_equal(r.unmasker.finish(reveals), r.expected())


def test_a_rebuilt_masking_key_must_be_the_advertised_one():
    r = shared_round()
    r.mask()
    r.upload({5})
    reveals = r.reveals()
    holders = [u for u in reveals if 5 in reveals[u].secret_keys]
    # Every holder lies consistently (shares of another key): the public-key check catches it.
    fake = split([os.urandom(32)], [u + 1 for u in holders], r.setup.threshold)
    lied = {u: Reveal(reveals[u].self_seeds, {5: fake[i, 0].tobytes()}) if u in holders else reveals[u] for i, u in enumerate(holders)}
    lied.update({u: reveals[u] for u in reveals if u not in holders})
    with pytest.raises(SecAggError, match="not the one it advertised"):
        r.unmasker.finish(lied)


def test_a_delivery_record_that_breaks_pair_cancellation_is_refused():
    r = shared_round()
    u = 0
    v = sorted(r.clients[u].client.neighbours)[0]
    delivered = {w: set(box) for w, box in r.inbox.items()}
    delivered[v].discard(u)
    unmasker = Unmasker(r.setup, AGREEMENT, r.keys, delivered)
    for w in range(10):
        unmasker.add(w, r.clients[w].mask(r.levels[w], r.inbox[w]))
    unmasker.close()
    with pytest.raises(SecAggError, match="pair masks do not cancel"):
        unmasker.finish({})
    with pytest.raises(SecAggError, match="non-neighbours"):
        Unmasker(r.setup, AGREEMENT, r.keys, {0: {w for w in range(1, 10)}})
    without_keys = {w: keys for w, keys in r.keys.items() if w != u}
    with pytest.raises(SecAggError, match=f"delivered to volunteer {u} come from non-neighbours or unknown keys"):
        Unmasker(r.setup, AGREEMENT, without_keys, {u: set(r.inbox[u])})
