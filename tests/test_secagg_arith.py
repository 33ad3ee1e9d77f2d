"""SecAgg's core arithmetic: quantization mod 2^b, packing, the mask PRG, HKDF, Shamir, the graph."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest

from webfl.core.secagg import (
    NeighbourGraph,
    Quantizer,
    ShareError,
    combine,
    default_degree,
    expand,
    modulus_bits,
    pack_bits,
    packed_size,
    split,
    unpack_bits,
)
from webfl.core.secagg import shamir, vectors
from webfl.core.secagg.kdf import hkdf_sha256

SEED = bytes(range(32))


# --- quantization -------------------------------------------------------------------------


@pytest.mark.parametrize(("q", "n", "bits"), [(8, 1, 8), (8, 2, 9), (8, 50, 14), (8, 64, 14), (8, 65, 15), (16, 100, 23), (1, 1000, 11)])
def test_modulus_bits_is_q_plus_ceil_log2_n(q, n, bits):
    assert modulus_bits(q, n) == bits
    assert modulus_bits(q, n, margin=2) == bits + 2
    assert Quantizer.for_cohort(1.0, q, n).capacity >= n


def test_modulus_bits_refuses_more_than_32_bits():
    with pytest.raises(ValueError, match="need 33 > 32"):
        modulus_bits(24, 2**8 + 1)


def test_the_largest_sum_of_a_cohort_does_not_wrap():
    quant = Quantizer.for_cohort(2.0, 8, 50)
    top = quant.quantize(np.array([2.0, 0.0]))  # a coordinate at +C: the top level
    assert top.tolist() == [255, 128] and quant.quantize(np.array([0.0, -2.0])).tolist() == [128, 0]
    total = (top.astype(np.uint64) * 50).astype(np.uint32)
    assert int(total.max()) == 50 * 255 < 2**quant.bits
    np.testing.assert_allclose(quant.decode_sum(total, 50), [100.0, 50 * (128 * 4 / 255 - 2)])


def test_nearest_rounding_errs_by_at_most_half_a_step_and_clips_to_the_l2_bound():
    quant = Quantizer.for_cohort(1.0, 8, 10)
    x = np.random.default_rng(0).normal(0, 0.05, 1000)
    x *= 0.9 / np.linalg.norm(x)
    step = 2 / 255
    assert np.abs(quant.decode_sum(quant.quantize(x), 1) - x).max() <= step / 2 + 1e-12
    big = x * 10  # norm 9: scaled down to norm 1 before quantizing
    np.testing.assert_allclose(quant.decode_sum(quant.quantize(big), 1), big / 9, atol=step / 2 + 1e-12)


def test_stochastic_rounding_is_unbiased():
    quant = Quantizer.for_cohort(1.0, 4, 1)
    x = np.array([0.01, -0.33, 0.5])
    rng = np.random.default_rng(3)
    draws = np.stack([quant.decode_sum(quant.quantize(x, rng), 1) for _ in range(20000)])
    step = 2 / 15
    assert np.ptp(draws, axis=0).max() == pytest.approx(step)  # it does round both ways
    # Mean of 20,000 draws: standard error <= step/2/sqrt(20000) ~ 4.7e-4; 5 of them as a bound.
    np.testing.assert_allclose(draws.mean(axis=0), x, atol=5 * step / 2 / np.sqrt(20000))


def test_a_coordinate_bound_narrows_the_levels_and_clips_beyond_it():
    d = 10_000
    x = np.random.default_rng(1).normal(0, 1, d)
    x /= np.linalg.norm(x)  # norm 1 = C: no L2 clipping; coordinates ~ 1/sqrt(d)
    full = Quantizer.for_cohort(1.0, 8, 10)
    fine = Quantizer.for_cohort(1.0, 8, 10, bound=4 / np.sqrt(d))
    assert fine.range == pytest.approx(0.04) and full.range == 1.0 and fine.bits == full.bits
    err_full = np.linalg.norm(full.decode_sum(full.quantize(x), 1) - x)
    err_fine = np.linalg.norm(fine.decode_sum(fine.quantize(x), 1) - x)
    assert err_fine < 0.02 and err_full > 10 * err_fine  # the full range rounds much of the update away
    spike = np.zeros(d)
    spike[0] = 0.5
    assert fine.decode_sum(fine.quantize(spike), 1)[0] == pytest.approx(0.04)  # clipped to the bound
    with pytest.raises(ValueError, match="coordinate bound must be a positive number"):
        Quantizer(1.0, 8, 12, bound=0.0)


def test_quantizer_refuses_what_it_cannot_represent():
    quant = Quantizer.for_cohort(1.0, 8, 10)
    with pytest.raises(ValueError, match="NaN or Inf"):
        quant.quantize(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="do not fit the modulus"):
        quant.decode_sum(np.zeros(3, np.uint32), quant.capacity + 1)
    with pytest.raises(ValueError, match="wrapped or is not a sum"):
        quant.decode_sum(np.array([3 * 255 + 1], np.uint32), 3)
    with pytest.raises(ValueError, match="uint32"):
        quant.decode_sum(np.zeros(3, np.int64), 1)
    with pytest.raises(ValueError, match="positive"):
        Quantizer(0.0, 8, 12)
    with pytest.raises(ValueError, match="modulus bits"):
        Quantizer(1.0, 8, 7)


# --- packing ------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", range(1, 33))
def test_packing_round_trips_at_every_width(bits):
    rng = np.random.default_rng(bits)
    for n in (0, 1, 7, 1001):
        values = rng.integers(0, 2**bits, n, dtype=np.uint64).astype(np.uint32)
        packed = pack_bits(values, bits)
        assert len(packed) == packed_size(n, bits) == -(-n * bits // 8)
        np.testing.assert_array_equal(unpack_bits(packed, bits, n), values)


def test_packing_puts_the_first_value_in_the_lowest_bits():
    assert pack_bits(np.array([1, 2, 3], np.uint32), 3) == bytes([0b11010001, 0b0])
    assert pack_bits(np.array([0xABC, 0x123], np.uint32), 12) == bytes([0xBC, 0x3A, 0x12])


def test_packing_refuses_malformed_input():
    with pytest.raises(ValueError, match="does not fit in 4 bits"):
        pack_bits(np.array([16], np.uint32), 4)
    with pytest.raises(ValueError, match="take 2 bytes, not 3"):
        unpack_bits(b"\0\0\0", 4, 3)
    with pytest.raises(ValueError, match="unused bits"):
        unpack_bits(bytes([0, 0x10]), 4, 3)
    with pytest.raises(ValueError, match="1..32"):
        pack_bits(np.zeros(1, np.uint32), 33)


# --- PRG and KDF --------------------------------------------------------------------------


def test_the_known_answer_vectors_hold_natively():
    assert vectors.check() == []


def test_the_prg_stream_is_shake256_of_the_documented_framing():
    words = np.frombuffer(hashlib.shake_256(b"webfl/secagg/prg/v1" + b"\x04self" + SEED).digest(12), "<u4")
    np.testing.assert_array_equal(expand(SEED, b"self", 3, 32), words)
    np.testing.assert_array_equal(expand(SEED, b"self", 3, 7), words & 0x7F)


def test_prg_streams_are_prefixes_and_labels_and_seeds_separate_them():
    long = expand(SEED, b"pair", 1000, 20)
    np.testing.assert_array_equal(expand(SEED, b"pair", 10, 20), long[:10])
    assert int(long.max()) < 2**20
    assert not np.array_equal(expand(SEED, b"self", 1000, 20), long)
    assert not np.array_equal(expand(bytes(32), b"pair", 1000, 20), long)


def test_prg_refuses_a_short_seed_and_bad_widths():
    with pytest.raises(ValueError, match="32 bytes, not 31"):
        expand(bytes(31), b"self", 4, 8)
    with pytest.raises(ValueError, match="1..32"):
        expand(SEED, b"self", 4, 0)


def test_hkdf_matches_rfc5869_and_refuses_overlong_output():
    ikm, salt, info, okm = vectors.HKDF_VECTOR
    assert hkdf_sha256(ikm, info, 42, salt).hex() == okm
    assert len(hkdf_sha256(b"k", b"i", 100)) == 100
    with pytest.raises(ValueError):
        hkdf_sha256(b"k", b"i", 255 * 32 + 1)


# --- Shamir -------------------------------------------------------------------------------


def test_any_threshold_of_shares_rebuild_every_secret():
    secrets = [bytes([i]) * 32 for i in range(5)] + [b"\xff" * 32, bytes(32)]
    points = [3, 4, 8, 9, 20]
    shares = split(secrets, points, 3)
    assert shares.shape == (5, len(secrets), shamir.SHARE_BYTES)
    for subset in itertools.combinations(range(5), 3):
        assert combine([points[i] for i in subset], shares[list(subset)], 3) == secrets
    assert combine(points, shares, 3) == secrets  # the extra two are checked, then agree


def test_shamir_agrees_with_a_big_integer_lagrange_interpolation():
    """An independent reference: interpolate at 0 with Python integers, element by element."""
    secret = bytes(range(200, 232))
    points = [5, 11, 2**31 - 2]  # the largest point: products stay below 2^62
    ys = split([secret], points, 3)[:, 0].view("<u4").astype(object)
    p = shamir.PRIME
    elements = []
    for e in range(ys.shape[1]):
        total = 0
        for i, xi in enumerate(points):
            w = 1
            for j, xj in enumerate(points):
                if j != i:
                    w = w * xj * pow(xj - xi, -1, p) % p
            total += w * int(ys[i, e])
        elements.append(total % p)
    assert b"".join(v.to_bytes(3, "little") for v in elements)[:32] == secret


def test_fewer_than_threshold_shares_are_refused_and_reveal_nothing_of_the_secret():
    shares = split([SEED], [1, 2, 3], 3)
    with pytest.raises(ShareError, match="2 shares cannot rebuild a secret shared with threshold 3"):
        combine([1, 2], shares[:2], 3)
    # Two different secrets give two shares spread over the whole field alike: nothing
    # in a share below the threshold depends on the secret.
    a = np.concatenate([split([bytes(32)], [1, 2, 3], 3)[:2].view("<u4").ravel() for _ in range(300)])
    b = np.concatenate([split([b"\xff" * 32], [1, 2, 3], 3)[:2].view("<u4").ravel() for _ in range(300)])
    assert abs(np.mean(a) / shamir.PRIME - 0.5) < 0.01 and abs(np.mean(b) / shamir.PRIME - 0.5) < 0.01


def test_corrupt_or_malformed_shares_are_refused():
    shares = split([SEED], [1, 2, 3, 4], 2)
    bad = shares.copy()
    bad[3, 0, 5] ^= 1
    with pytest.raises(ShareError, match="point 4 is inconsistent"):
        combine([1, 2, 3, 4], bad, 2)
    with pytest.raises(ShareError, match="distinct"):
        combine([1, 1], shares[:2], 2)
    with pytest.raises(ShareError, match="1..p-1"):
        combine([0, 1], shares[:2], 2)
    with pytest.raises(ShareError, match="shape"):
        combine([1, 2], shares[:2, :, :40], 2)
    outside = shares.copy()
    outside[0, 0, :4] = 0xFF  # 2^32 - 1 >= p
    with pytest.raises(ShareError, match="not an element"):
        combine([1, 2], outside[:2], 2)
    with pytest.raises(ValueError, match="threshold must be in 1..2"):
        split([SEED], [1, 2], 3)


# --- the neighbour graph ------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 5, 10, 11, 50, 101])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 7, 8, 200])
def test_the_graph_is_symmetric_and_k_regular_up_to_one_volunteer(n, k):
    graph = NeighbourGraph(n, k, SEED)
    adjacency, degrees = graph.adjacency, graph.degrees()
    assert (adjacency == adjacency.T).all() and not adjacency.diagonal().any()
    expected = min(k, n - 1)
    assert graph.k == expected and degrees.min() == expected
    extra = 1 if n % 2 and expected % 2 and expected < n - 1 else 0
    assert (degrees > expected).sum() == extra and degrees.max() == expected + extra
    assert all(u in graph.neighbours(v) for u in range(n) for v in graph.neighbours(u))


def test_the_graph_is_a_function_of_its_public_seed():
    a, b, c = NeighbourGraph(50, 6, SEED), NeighbourGraph(50, 6, SEED), NeighbourGraph(50, 6, bytes(32))
    assert (a.adjacency == b.adjacency).all() and not (a.adjacency == c.adjacency).all()


def test_graph_refusals_and_default_degree():
    with pytest.raises(ValueError, match="at least 2 volunteers"):
        NeighbourGraph(1, 1, SEED)
    with pytest.raises(ValueError, match="at least 1 neighbour"):
        NeighbourGraph(5, 0, SEED)
    with pytest.raises(ValueError, match="not in a cohort of 5"):
        NeighbourGraph(5, 2, SEED).neighbours(5)
    assert [default_degree(n) for n in (2, 3, 10, 50, 100, 1000)] == [1, 2, 4, 6, 7, 10]
