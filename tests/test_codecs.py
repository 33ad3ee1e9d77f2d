"""Update codecs: round trips, statistics, error bounds, sizes and hostile payloads."""

from __future__ import annotations

import functools
import math
import tracemalloc
import zlib

import numpy as np
import pytest

from webfl.core.codecs import index as index_coding, rotation
from webfl.core.aggregation import FedAvg
from webfl.core.codecs import BLOCK, CODECS, Codec, CodecError, Encoded, ErrorFeedback, get_codec
from webfl.core.protocol import Message, decode, encode

SPECS = [
    "none", "fp16", "q8", "q4", "q2", "q1", "rot+q8", "rot+q4", "rot+q2", "rot+q1",
    "topk:0.01", "topk:0.01+q8", "topk:0.05+fp16", "topk:0.1+q2", "topk:0.02+rot+q4", "topk:0.6+q8",
]


def gaussian(n: int, seed: int = 0, scale: float = 1e-3) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def plain(codec: Codec, x: np.ndarray, seed: int = 0) -> tuple[dict, list[np.ndarray]]:
    """The codec's params and arrays before deflate, for crafting payloads."""
    return codec._encode(np.asarray(x, np.float32), np.random.default_rng(seed))


def deflated(params: dict, arrays: list[np.ndarray]) -> Encoded:
    raw = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    return Encoded({**params, "deflate": True}, (np.frombuffer(zlib.compress(raw), np.uint8),))


def frame_of(codec: Codec, enc: Encoded) -> bytes:
    fields = {
        "round": 3, "model_version": 2, "num_examples": 17, "loss": 0.5, "accuracy": 0.25,
        "codec": codec.spec, "codec_params": enc.params, "token": "t",
    }
    return encode(Message("update", fields, enc.arrays))


# -- specs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, canonical, stages",
    [
        ("none", "none", ("none",)),
        (" FP16 ", "fp16", ("fp16",)),
        ("q1", "q1", ("q1",)),
        ("rot+q8", "rot+q8", ("rot", "q8")),
        ("topk:0.010", "topk:0.01", ("topk",)),
        ("topk:1e-2+q8", "topk:0.01+q8", ("topk", "q8")),
        ("topk:0.05+fp16", "topk:0.05+fp16", ("topk", "fp16")),
        ("topk:1+rot+q2", "topk:1.0+rot+q2", ("topk", "rot", "q2")),
    ],
)
def test_spec_is_parsed_and_canonicalised(spec, canonical, stages):
    codec = get_codec(spec)
    assert (codec.spec, codec.stages) == (canonical, stages)
    assert get_codec(codec.spec).spec == canonical
    assert set(stages) <= set(CODECS)


@pytest.mark.parametrize(
    "spec",
    ["", "q3", "q16", "fp32", "rot", "rot+fp16", "topk:0.1+rot", "none+q8", "q8+none", "q8+topk:0.1",
     "topk:0", "topk:-0.1", "topk:1.5", "topk:nan", "topk:inf", "topk:", "topk:x+q8", "topk:0.1+q8+fp16",
     "rot+rot+q8", "q8+", "topk", None, 8],
)
def test_bad_spec_is_refused_with_the_grammar(spec):
    with pytest.raises(ValueError, match="grammar"):
        get_codec(spec)


def test_advertisement_names_every_stage():
    assert set(CODECS) == {stage for spec in SPECS for stage in get_codec(spec).stages}
    assert {"none", "fp16", "q8"} <= set(CODECS)


# -- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("n", [1, 2, 3, 255, 256, 257, 1000])
def test_round_trip_shape_and_finiteness(spec, n):
    codec = get_codec(spec)
    x = gaussian(n, seed=n)
    enc = codec.encode(x, np.random.default_rng(1))
    out = codec.decode(enc, n)
    assert out.dtype == np.float32 and out.shape == (n,)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("spec", SPECS)
def test_every_codec_survives_the_wire(spec):
    codec = get_codec(spec)
    n = 5000
    enc = codec.encode(gaussian(n), np.random.default_rng(2))
    msg = decode(frame_of(codec, enc))
    received = Encoded(msg["codec_params"], msg.arrays)
    assert msg["codec"] == codec.spec
    np.testing.assert_array_equal(codec.decode(received, n), codec.decode(enc, n))


@pytest.mark.parametrize("spec", SPECS)
def test_encoding_is_a_function_of_the_rng_seed(spec):
    codec, x = get_codec(spec), gaussian(777)
    a, b = (codec.encode(x, np.random.default_rng(9)) for _ in range(2))
    assert a.params == b.params
    assert [t.tobytes() for t in a.arrays] == [t.tobytes() for t in b.arrays]


def test_none_is_exact_and_unparameterised():
    x = gaussian(1000)
    enc = get_codec("none").encode(x, np.random.default_rng())
    assert enc.params == {} and len(enc.arrays) == 1 and enc.arrays[0].dtype == np.dtype("<f4")
    np.testing.assert_array_equal(get_codec("none").decode(enc, 1000), x)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_encode_refuses_non_finite_input(spec, bad):
    x = gaussian(300)
    x[17] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        get_codec(spec).encode(x, np.random.default_rng())


@pytest.mark.parametrize("x", [np.zeros(0), np.zeros((3, 4))])
def test_encode_refuses_a_non_vector(x):
    with pytest.raises(ValueError, match="non-empty vector"):
        get_codec("q8").encode(x, np.random.default_rng())


# -- error bounds and statistics ---------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-7, 1e-3, 1.0, 1e6])
def test_fp16_error_is_half_precision_relative_to_the_peak(scale):
    x = gaussian(20_000, scale=scale)
    enc = get_codec("fp16").encode(x, np.random.default_rng())
    out = get_codec("fp16").decode(enc, x.size)
    # Round to nearest: half an ulp of 11 significant bits, or of the smallest
    # subnormal relative to the power-of-two scale that puts the peak below 2**15.
    bound = np.maximum(np.abs(x) * 2.0**-11, 2.0 ** (enc.params["exp"] - 25))
    assert (np.abs(out.astype(np.float64) - x) <= bound).all()
    assert np.abs(x).max() * 2.0 ** -enc.params["exp"] < 2**15


def block_steps(x: np.ndarray, bits: int) -> np.ndarray:
    """Each value's quantization step: its block's range over 2**bits - 1."""
    blocks = [x[i : i + BLOCK] for i in range(0, x.size, BLOCK)]
    steps = np.array([(b.max() - b.min()) / (2**bits - 1) for b in blocks], np.float64)
    return np.repeat(steps, BLOCK)[: x.size]


@pytest.mark.parametrize("bits", [8, 4, 2, 1])
def test_quantization_error_is_below_one_step(bits):
    x = gaussian(3000, seed=bits)
    x[1024:1280] = 0.25  # a constant block: step 0, decoded exactly
    codec = get_codec(f"q{bits}")
    for seed in range(5):
        out = codec.decode(codec.encode(x, np.random.default_rng(seed)), x.size)
        step = block_steps(x, bits)
        assert (np.abs(out.astype(np.float64) - x) <= step * (1 + 1e-5) + 1e-6 * np.abs(x)).all()
        np.testing.assert_array_equal(out[1024:1280], 0.25)


@pytest.mark.parametrize("bits", [8, 4, 2, 1])
def test_rotated_quantization_error_is_below_one_step_in_the_rotated_basis(bits):
    x = gaussian(3000, seed=bits)
    codec = get_codec(f"rot+q{bits}")
    enc = codec.encode(x, np.random.default_rng(bits))
    rotated = rotation.rotate(x, enc.params["seed"])
    bound = math.sqrt(np.sum(block_steps(rotated, bits) ** 2))  # the rotation keeps L2 norms
    error = np.linalg.norm(codec.decode(enc, x.size).astype(np.float64) - x)
    assert error <= bound * (1 + 1e-4)


def test_rotation_is_orthonormal_and_spreads_outliers():
    x = gaussian(199_210, seed=3)
    y = rotation.rotate(x, 12)
    assert y.size == x.size  # no padding to a power of two
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-5)
    np.testing.assert_allclose(rotation.rotate(y, 12, inverse=True), x, atol=1e-8)
    spiky = np.zeros(4096, np.float32)
    spiky[::512] = 1.0
    assert np.abs(rotation.rotate(spiky, 5)).max() < 0.2


def test_rotation_signs_are_pinned_to_the_raw_pcg64_stream():
    # Browser and server must draw the same signs whatever their NumPy version.
    expected = [-1, 1, -1, -1, -1, 1, 1, -1, -1, 1, 1, 1, 1, 1, -1, -1]
    assert rotation.signs(12345, 16).tolist() == expected


def test_rotation_lowers_quantization_error_on_isolated_outliers():
    x = gaussian(8192, seed=5)
    x[::1000] = 0.5  # an outlier stretches its block's range; rotation spreads it out
    errors = {}
    for spec in ("q4", "rot+q4"):
        codec = get_codec(spec)
        outs = [codec.decode(codec.encode(x, np.random.default_rng(s)), x.size) for s in range(5)]
        errors[spec] = np.mean([np.linalg.norm(o - x) for o in outs])
    assert errors["rot+q4"] < 0.5 * errors["q4"]


def mean_of_draws(spec: str, x: np.ndarray, draws: int) -> np.ndarray:
    codec = get_codec(spec)
    return np.mean([codec.decode(codec.encode(x, np.random.default_rng(seed)), x.size) for seed in range(draws)], axis=0)


def assert_noise(error: np.ndarray, sem: np.ndarray) -> None:
    """``error`` looks like zero-mean noise of standard deviation ``sem``."""
    z = error / sem
    # Each entry within 5.5 standard errors (chance of a false alarm among 300: ~1e-5);
    # and the z-scores have mean 0 and variance 1, so no bias hides under the tolerance.
    assert np.abs(z).max() < 5.5
    assert abs(z.mean()) < 5.5 / math.sqrt(z.size)
    assert abs(np.mean(z**2) - 1) < 5.5 * math.sqrt(2 / z.size)


@pytest.mark.parametrize("bits", [8, 4, 2, 1])
def test_stochastic_quantizers_are_unbiased_with_the_variance_of_neighbour_rounding(bits):
    draws = 2000
    x = np.random.default_rng(bits).uniform(-1, 1, 300).astype(np.float32)  # two blocks, one ragged
    x[:20] *= 5  # so the blocks' scales differ
    mean = mean_of_draws(f"q{bits}", x, draws)
    # Rounding to the two neighbouring levels, up with probability f (the fraction of
    # the way to the upper one), has mean x and variance f (1 - f) step**2.
    step = block_steps(x, bits)
    lows = np.repeat([x[i : i + BLOCK].min() for i in range(0, x.size, BLOCK)], BLOCK)[: x.size]
    f = np.divide(x - lows, step, out=np.zeros_like(step), where=step > 0) % 1
    var = f * (1 - f) * step**2
    noisy = f * (1 - f) > 0.01  # near a level the draws are too few to see the noise
    assert_noise((mean - x)[noisy], np.sqrt(var[noisy] / draws))
    assert (np.abs(mean - x)[~noisy] <= 5.5 * np.sqrt(0.01 / draws) * step[~noisy] + 1e-4 * step[~noisy]).all()


@pytest.mark.parametrize("bits", [2, 8])
def test_rotated_quantizers_are_unbiased(bits):
    codec, draws = get_codec(f"rot+q{bits}"), 2000
    x = np.random.default_rng(bits).uniform(-1, 1, 300).astype(np.float32)
    outs = np.stack([codec.decode(codec.encode(x, np.random.default_rng(s)), x.size) for s in range(draws)])
    # A fresh rotation per draw: every entry is noisy, so its sample variance is reliable.
    assert_noise(outs.mean(axis=0) - x, outs.std(axis=0, ddof=1) / math.sqrt(draws))


# -- top-k -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, n, k", [("topk:0.01", 10_000, 100), ("topk:0.3", 10, 3), ("topk:1e-9", 50, 1), ("topk:1", 7, 7)])
def test_topk_keeps_exactly_the_k_largest(spec, n, k):
    rng = np.random.default_rng(n)
    x = (rng.permutation(n) + 1).astype(np.float32) * rng.choice([-1, 1], n)  # distinct magnitudes
    out = get_codec(spec).decode(get_codec(spec).encode(x, rng), n)
    kept = np.flatnonzero(out)
    np.testing.assert_array_equal(kept, np.sort(np.argsort(-np.abs(x))[:k]))
    np.testing.assert_array_equal(out[kept], x[kept])


def test_topk_values_are_coded_by_the_value_stage():
    x = gaussian(10_000)
    out = get_codec("topk:0.05+q8").decode(get_codec("topk:0.05+q8").encode(x, np.random.default_rng()), x.size)
    kept = np.sort(np.argsort(-np.abs(x))[:500])
    np.testing.assert_array_equal(np.flatnonzero(out), kept)
    assert (np.abs(out[kept].astype(np.float64) - x[kept]) <= block_steps(x[kept], 8) * 1.0001).all()


@pytest.mark.parametrize("spec, index", [("topk:0.05", "varint"), ("topk:0.2", "bitmap"), ("topk:0.6+q8", "bitmap")])
def test_index_encoding_is_the_smaller_one_and_both_decode(spec, index):
    n = 1000
    x = gaussian(n)
    codec = get_codec(spec)
    params, arrays = plain(codec, x)
    assert params["index"] == index
    varint = index_coding.varint_encode(np.sort(np.argsort(-np.abs(x))[: codec.k(n)]))
    assert arrays[0].size == min(varint.size, -(-n // 8))
    out = codec.decode(codec.encode(x, np.random.default_rng(0)), n)
    assert np.count_nonzero(out) == codec.k(n)


def test_varints_round_trip_every_byte_length():
    gaps = np.array([0, 127, 128, 2**14 - 1, 2**14, 2**21, 2**28, 0, 2**29])  # each coded less one
    idx = np.cumsum(gaps + 1) - 1
    buf = index_coding.varint_encode(idx)
    assert buf.size == 1 + 1 + 2 + 2 + 3 + 4 + 5 + 1 + 5
    np.testing.assert_array_equal(index_coding.varint_indices(buf, idx.size, 2**31 - 1), idx)


def test_any_index_stream_decodes_to_increasing_indices_or_is_refused():
    # Gaps are coded less one, so repeated or unsorted indices cannot be expressed.
    rng, codec, n, accepted = np.random.default_rng(0), get_codec("topk:0.01"), 1000, 0
    k = codec.k(n)
    for _ in range(300):
        index_bytes = int(rng.integers(k, k + 4))
        buf = rng.integers(0, 256, index_bytes, dtype=np.uint8)
        buf[rng.random(index_bytes) < 0.9] &= 0x07  # mostly single-byte small gaps
        enc = Encoded({"index": "varint", "index_bytes": index_bytes}, (buf, np.ones(k, "<f4")))
        try:
            out = codec.decode(enc, n)
        except CodecError:
            continue
        accepted += 1
        assert np.count_nonzero(out) == k and out.sum() == k
    assert accepted > 10


# -- error feedback ----------------------------------------------------------------------


def test_error_feedback_carries_what_topk_drops():
    n, steps = 2000, 40
    codec = get_codec("topk:0.05")
    feedback, rng = ErrorFeedback(codec, n), np.random.default_rng(0)
    deltas = [gaussian(n, seed=100 + t) + 2e-4 for t in range(steps)]  # a steady drift top-k alone misses
    sent_with = sum(codec.decode(feedback.encode(d, rng), n).astype(np.float64) for d in deltas)
    sent_without = sum(codec.decode(codec.encode(d, rng), n).astype(np.float64) for d in deltas)
    truth = sum(d.astype(np.float64) for d in deltas)
    # Nothing is lost, only delayed: what was sent plus what is held is what came in.
    np.testing.assert_allclose(sent_with + feedback.residual, truth, atol=1e-5)
    one = np.linalg.norm(deltas[0])
    assert np.linalg.norm(feedback.residual) < 6 * one  # bounded, not growing with the steps
    assert np.linalg.norm(truth - sent_with) < 0.5 * np.linalg.norm(truth - sent_without)


def test_error_feedback_state_round_trips_and_is_checked():
    codec = get_codec("topk:0.1+q8")
    a = ErrorFeedback(codec, 500)
    a.encode(gaussian(500), np.random.default_rng(1))
    b = ErrorFeedback(codec, 500)
    b.load_state(a.state())
    np.testing.assert_array_equal(b.residual, a.residual)
    assert np.any(a.state() != 0) and a.state() is not a.residual
    for bad in (np.zeros(499), np.full(500, np.nan), np.zeros((500, 1))):
        with pytest.raises(ValueError, match="residual"):
            b.load_state(bad)


def test_error_feedback_is_harmless_with_an_unbiased_codec():
    codec, rng = get_codec("q8"), np.random.default_rng(3)
    feedback = ErrorFeedback(codec, 1000)
    for t in range(5):
        feedback.encode(gaussian(1000, seed=t), rng)
    assert (np.abs(feedback.residual) <= block_steps(gaussian(1000, seed=4), 8).max() * 2).all()


# -- deflate -----------------------------------------------------------------------------


def test_deflate_is_used_when_it_shrinks_the_payload():
    x = gaussian(20_000)
    x[:15_000] = 0  # e.g. weights of always-blank pixels: runs of exact zeros
    for spec in ("fp16", "q8", "q2", "topk:0.5+q8"):
        codec = get_codec(spec)
        enc = codec.encode(x, np.random.default_rng(0))
        raw = sum(a.nbytes for a in plain(codec, x)[1])
        assert enc.params["deflate"] is True and len(enc.arrays) == 1
        assert enc.nbytes < 0.5 * raw
        np.testing.assert_array_equal(codec.decode(enc, x.size), codec.decode(Encoded(*plain(codec, x)), x.size))


def test_deflate_is_skipped_when_it_would_not_shrink_the_payload():
    x = np.random.default_rng(0).uniform(-1, 1, 20_000).astype(np.float32)  # uniform codes: no redundancy
    codec = get_codec("q8")
    enc = codec.encode(x, np.random.default_rng(0))
    assert "deflate" not in enc.params and len(enc.arrays) == 2
    assert len(zlib.compress(b"".join(a.tobytes() for a in enc.arrays), 9)) >= enc.nbytes


def test_none_never_deflates():
    enc = get_codec("none").encode(np.zeros(10_000, np.float32), np.random.default_rng())
    assert enc.params == {} and enc.nbytes == 40_000


# -- sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, target", [("q8", 0.26), ("topk:0.01+q8", 0.03), ("q4", 0.14), ("q1", 0.05), ("fp16", 0.5)])
def test_compressed_frame_size_on_a_2nn_sized_delta(spec, target):
    n = 199_210  # the 2NN: 784-200-200-10
    codec = get_codec(spec)
    enc = codec.encode(gaussian(n), np.random.default_rng(0))
    assert len(frame_of(codec, enc)) <= target * 4 * n


# -- the server side ---------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_accumulate_adds_the_weighted_decoded_update(spec):
    codec, n = get_codec(spec), 3000
    enc = codec.encode(gaussian(n), np.random.default_rng(4))
    start = np.random.default_rng(5).standard_normal(n)
    acc = start.copy()
    codec.accumulate(acc, 3.5, enc)
    update = 3.5 * codec.decode(enc, n).astype(np.float64)
    # The weighted update is formed in float32 (no float64 copy of it): 2**-24 relative.
    np.testing.assert_allclose(acc, start + update, rtol=0, atol=1e-7 * np.abs(update).max())


def test_fedavg_averages_updates_of_mixed_codecs():
    n = 1000
    updates = [("none", gaussian(n, 1), 10.0), ("topk:0.1+q8", gaussian(n, 2), 30.0), ("rot+q4", gaussian(n, 3), 60.0)]
    agg = FedAvg()
    agg.begin(n)
    expected = np.zeros(n)
    for spec, x, weight in updates:
        codec = get_codec(spec)
        enc = codec.encode(x, np.random.default_rng(0))
        agg.add(codec, enc, weight)
        expected += weight * codec.decode(enc, n)
    np.testing.assert_allclose(agg.finish(), expected / 100.0, rtol=1e-5, atol=1e-9)


def test_full_model_downlink_with_fp16():
    # The server may send the whole model, not a delta: the same codecs apply.
    weights = np.random.default_rng(0).uniform(-0.3, 0.3, 199_210).astype(np.float32)
    codec = get_codec("fp16")
    enc = codec.encode(weights, np.random.default_rng())
    msg = decode(encode(Message("model", {"model_version": 1, "codec": "fp16", "codec_params": enc.params}, enc.arrays)))
    out = codec.decode(Encoded(msg["codec_params"], msg.arrays), 199_210)
    assert np.abs(out - weights).max() <= 0.3 * 2.0**-11
    with pytest.raises(CodecError):
        codec.decode(Encoded(msg["codec_params"], msg.arrays), 199_211)


# -- hostile payloads --------------------------------------------------------------------

N = 1001  # ragged: 4 blocks, the last of 233 values; 2-bit codes leave 6 spare bits


def base(spec: str) -> tuple[Codec, dict, list[np.ndarray]]:
    codec = get_codec(spec)
    params, arrays = plain(codec, gaussian(N, seed=11))
    return codec, params, [np.array(a) for a in arrays]


def replaced(arrays: list[np.ndarray], i: int, new: np.ndarray) -> list[np.ndarray]:
    return [new if j == i else a for j, a in enumerate(arrays)]


def with_scale(arrays: list[np.ndarray], row: int, col: int, value: float) -> list[np.ndarray]:
    scales = arrays[1].copy()
    scales[row, col] = value
    return replaced(arrays, 1, scales)


def topk_payload(index_bytes: list[int]) -> tuple[dict, list[np.ndarray]]:
    """A topk:0.05 payload (k = 50) with the given varint index bytes."""
    buf = np.array(index_bytes, np.uint8)
    return {"index": "varint", "index_bytes": buf.size}, [buf, np.ones(50, "<f4")]


def single_varints(gaps: list[int]) -> list[int]:
    return list(index_coding.varint_encode(np.cumsum(np.array(gaps) + 1) - 1))


def bitmap_with(bits: list[int]) -> list[np.ndarray]:
    mask = np.zeros(-(-N // 8) * 8, bool)
    mask[bits] = True
    return [np.packbits(mask, bitorder="little"), np.ones(len(bits), "<f4")]


@functools.cache
def zip_bomb() -> np.ndarray:
    """65 kB that inflate to 64 MB."""
    deflater, zeros = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_RLE), bytes(2**20)
    blob = b"".join(deflater.compress(zeros) for _ in range(64)) + deflater.flush()
    return np.frombuffer(blob, np.uint8)


def q8_deflated(mutate=lambda arrays: arrays, **extra) -> Encoded:
    codec, params, arrays = base("q8")
    enc = deflated(params, mutate(arrays))
    return Encoded({**enc.params, **extra}, enc.arrays)


def _cases():
    """(id, spec, payload builder) for every way a payload can be malformed."""
    c = []

    def case(name, spec, build):
        c.append(pytest.param(spec, build, id=name))

    def mutated(spec, f):
        def build():
            _, params, arrays = base(spec)
            out = f(dict(params), arrays)
            return out if isinstance(out, Encoded) else Encoded(*out)

        return build

    # Framing shared by all codecs.
    case("params-not-a-dict", "q8", mutated("q8", lambda p, a: Encoded([], tuple(a))))
    case("arrays-not-a-tuple", "q8", lambda: Encoded({}, None))
    case("array-not-ndarray", "none", mutated("none", lambda p, a: (p, [a[0].tolist()])))
    case("unknown-param", "q8", mutated("q8", lambda p, a: ({**p, "bits": 8}, a)))
    case("too-few-arrays", "q8", mutated("q8", lambda p, a: (p, a[:1])))
    case("too-many-arrays", "q8", mutated("q8", lambda p, a: (p, [*a, a[0]])))
    case("size-mismatch", "q8", lambda: Encoded(*plain(get_codec("q8"), gaussian(N + 256))))
    # none and fp16, also the model downlink.
    case("none-wrong-dtype", "none", mutated("none", lambda p, a: (p, [a[0].astype("<f8")])))
    case("none-big-endian", "none", mutated("none", lambda p, a: (p, [a[0].astype(">f4")])))
    case("none-truncated", "none", mutated("none", lambda p, a: (p, [a[0][:-1]])))
    case("none-2d", "none", mutated("none", lambda p, a: (p, [np.stack([a[0], a[0]])])))
    case("none-nan", "none", mutated("none", lambda p, a: (p, [np.where(np.arange(N) == 5, np.nan, a[0]).astype("<f4")])))
    case("none-inf", "none", mutated("none", lambda p, a: (p, [np.where(np.arange(N) == 5, np.inf, a[0]).astype("<f4")])))
    case("none-param", "none", mutated("none", lambda p, a: ({"exp": 0}, a)))
    case("none-deflate", "none", lambda: deflated({}, base("none")[2]))
    case("fp16-no-exp", "fp16", mutated("fp16", lambda p, a: ({}, a)))
    for name, exp in [("bool", True), ("float", 1.0), ("str", "3"), ("null", None), ("huge", 10**6), ("list", [1])]:
        case(f"fp16-exp-{name}", "fp16", mutated("fp16", lambda p, a, exp=exp: ({"exp": exp}, a)))
    case("fp16-exp-overflows", "fp16", mutated("fp16", lambda p, a: ({"exp": 150}, a)))
    case("fp16-as-f4", "fp16", mutated("fp16", lambda p, a: (p, [a[0].astype("<f4")])))
    case("fp16-inf", "fp16", mutated("fp16", lambda p, a: (p, [np.where(np.arange(N) == 0, np.inf, a[0]).astype("<f2")])))
    # Quantizers.
    case("q8-codes-truncated", "q8", mutated("q8", lambda p, a: (p, replaced(a, 0, a[0][:-1]))))
    case("q8-codes-int8", "q8", mutated("q8", lambda p, a: (p, replaced(a, 0, a[0].view("i1")))))
    case("q8-block-count", "q8", mutated("q8", lambda p, a: (p, replaced(a, 1, a[1][:-1]))))
    case("q8-extra-block", "q8", mutated("q8", lambda p, a: (p, replaced(a, 1, np.vstack([a[1], a[1][:1]])))))
    case("q8-scales-flat", "q8", mutated("q8", lambda p, a: (p, replaced(a, 1, a[1].reshape(-1)))))
    case("q8-scales-f8", "q8", mutated("q8", lambda p, a: (p, replaced(a, 1, a[1].astype("<f8")))))
    case("q8-scale-nan", "q8", mutated("q8", lambda p, a: (p, with_scale(a, 2, 0, np.nan))))
    case("q8-step-inf", "q8", mutated("q8", lambda p, a: (p, with_scale(a, 3, 1, np.inf))))
    case("q8-step-negative", "q8", mutated("q8", lambda p, a: (p, with_scale(a, 0, 1, -1e-3))))
    case("q8-levels-overflow", "q8", mutated("q8", lambda p, a: (p, with_scale(with_scale(a, 1, 0, 3e38), 1, 1, 3e36))))
    case("q2-spare-bits-set", "q2", mutated("q2", lambda p, a: (p, replaced(a, 0, np.concatenate([a[0][:-1], [a[0][-1] | 0x10]]).astype(np.uint8)))))
    case("q1-bool-codes", "q1", mutated("q1", lambda p, a: (p, replaced(a, 0, a[0].astype(bool)))))
    for name, seed in [("missing", ...), ("float", 1.0), ("bool", False), ("negative", -1), ("too-big", 2**31), ("str", "7"), ("null", None)]:
        def seeded(p, a, seed=seed):
            p.pop("seed")
            return ({**p, "seed": seed} if seed is not ... else p), a

        case(f"rot-seed-{name}", "rot+q4", mutated("rot+q4", seeded))
    # Top-k indices: varint (topk:0.05 of 1001 keeps 50) and bitmap (topk:0.6 keeps 601).
    case("topk-index-unknown", "topk:0.05", mutated("topk:0.05", lambda p, a: ({**p, "index": "rle"}, a)))
    case("topk-index-missing", "topk:0.05", mutated("topk:0.05", lambda p, a: ({"index_bytes": p["index_bytes"]}, a)))
    case("topk-index-bytes-missing", "topk:0.05", mutated("topk:0.05", lambda p, a: ({"index": "varint"}, a)))
    case("topk-index-bytes-bool", "topk:0.05", mutated("topk:0.05", lambda p, a: ({**p, "index_bytes": True}, a)))
    case("topk-index-bytes-below-k", "topk:0.05", lambda: Encoded(*topk_payload([0] * 49)))
    case("topk-index-bytes-lie", "topk:0.05", mutated("topk:0.05", lambda p, a: ({**p, "index_bytes": p["index_bytes"] + 1}, a)))
    case("topk-varint-truncated", "topk:0.05", lambda: Encoded(*topk_payload([0] * 49 + [0x85])))
    case("topk-varint-too-many", "topk:0.05", lambda: Encoded(*topk_payload([0] * 51)))
    case("topk-varint-too-few", "topk:0.05", lambda: Encoded(*topk_payload([0] * 48 + [0x81, 0x81])))
    case("topk-varint-6-bytes", "topk:0.05", lambda: Encoded(*topk_payload([0] * 49 + [0x81] * 5 + [0x01])))
    case("topk-varint-overlong", "topk:0.05", lambda: Encoded(*topk_payload([0x80, 0x00] + [0] * 49)))
    case("topk-index-out-of-range", "topk:0.05", lambda: Encoded(*topk_payload(single_varints([0] * 49 + [952]))))
    case("topk-index-far-out-of-range", "topk:0.05", lambda: Encoded(*topk_payload([0] * 49 + [0xFF] * 4 + [0x7F])))
    case("topk-values-nan", "topk:0.05", mutated("topk:0.05", lambda p, a: (p, replaced(a, 1, np.full(50, np.nan, "<f4")))))
    case("topk-values-count", "topk:0.05", mutated("topk:0.05", lambda p, a: (p, replaced(a, 1, a[1][:-1]))))
    case("topk-bitmap-count", "topk:0.6", lambda: Encoded({"index": "bitmap"}, tuple(bitmap_with(list(range(600))))))
    case("topk-bitmap-past-end", "topk:0.6", lambda: Encoded({"index": "bitmap"}, tuple(bitmap_with(list(range(600)) + [1005]))))
    case("topk-bitmap-length", "topk:0.6", mutated("topk:0.6", lambda p, a: (p, replaced(a, 0, a[0][:-1]))))
    case("topk-bitmap-with-bytes", "topk:0.6", mutated("topk:0.6", lambda p, a: ({**p, "index_bytes": 601}, a)))
    case("topk-q8-scale-inf", "topk:0.05+q8", mutated("topk:0.05+q8", lambda p, a: (p, replaced(a, 2, np.full_like(a[2], np.inf)))))
    case("topk-rot-seed", "topk:0.05+rot+q8", mutated("topk:0.05+rot+q8", lambda p, a: ({**p, "seed": 0.5}, a)))
    # Deflate.
    case("deflate-int-flag", "q8", lambda: q8_deflated(deflate=1))
    case("deflate-false", "q8", lambda: q8_deflated(deflate=False))
    case("deflate-garbage", "q8", lambda: Encoded({"deflate": True}, (np.frombuffer(b"not zlib at all" * 9, np.uint8),)))
    case("deflate-truncated", "q8", lambda: Encoded(q8_deflated().params, (q8_deflated().arrays[0][:-9],)))
    case("deflate-trailing-bytes", "q8", lambda: Encoded(q8_deflated().params, (np.concatenate([q8_deflated().arrays[0], np.zeros(3, np.uint8)]),)))
    case("deflate-too-short", "q8", lambda: q8_deflated(lambda a: replaced(a, 1, a[1][:-1])))
    case("deflate-too-long", "q8", lambda: q8_deflated(lambda a: [*a, np.zeros(1, np.uint8)]))
    case("deflate-bomb", "q8", lambda: Encoded({"deflate": True}, (zip_bomb(),)))
    case("deflate-two-arrays", "q8", lambda: Encoded(q8_deflated().params, q8_deflated().arrays * 2))
    case("deflate-u2", "q8", lambda: Encoded(q8_deflated().params, (np.zeros(8, "<u2"),)))
    case("deflate-2d", "q8", lambda: Encoded(q8_deflated().params, (q8_deflated().arrays[0][:100].reshape(10, 10),)))
    case("deflated-nan-scale", "q8", lambda: q8_deflated(lambda a: with_scale(a, 0, 0, np.nan)))
    case("deflated-topk-out-of-range", "topk:0.05", lambda: deflated(*topk_payload(single_varints([0] * 49 + [960]))))
    return c


@pytest.mark.parametrize("spec, build", _cases())
def test_malformed_payload_is_refused_and_leaves_the_accumulator_alone(spec, build):
    codec, enc = get_codec(spec), build()
    acc = np.random.default_rng(0).standard_normal(N)
    before = acc.copy()
    with pytest.raises(CodecError) as info:
        codec.accumulate(acc, 2.0, enc)
    np.testing.assert_array_equal(acc, before)
    assert str(info.value)  # a reason for the reject message
    with pytest.raises(CodecError):
        codec.decode(enc, N)


def test_the_payloads_the_hostile_ones_start_from_are_valid():
    for spec in ("none", "fp16", "q8", "q2", "q1", "rot+q4", "topk:0.05", "topk:0.6", "topk:0.05+q8", "topk:0.05+rot+q8"):
        codec, params, arrays = base(spec)
        assert codec.decode(Encoded(params, tuple(arrays)), N).shape == (N,)
    assert get_codec("topk:0.05").decode(Encoded(*topk_payload(single_varints([0] * 49 + [951]))), N)[-1] == 1
    assert get_codec("q8").decode(q8_deflated(), N).shape == (N,)
    assert get_codec("topk:0.6").decode(Encoded({"index": "bitmap"}, tuple(bitmap_with(list(range(601))))), N).sum() == 601


def test_a_zip_bomb_is_refused_without_inflating_it():
    bomb = Encoded({"deflate": True}, (zip_bomb(),))
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match="exactly"):
            get_codec("q8").decode(bomb, N)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # the payload only ever needed ~1.3 kB; the bomb is 64 MB


def test_fedavg_keeps_its_state_when_an_update_is_refused():
    agg, codec = FedAvg(), get_codec("topk:0.05")
    agg.begin(N)
    good = codec.encode(gaussian(N), np.random.default_rng(0))
    agg.add(codec, good, 1.0)
    with pytest.raises(CodecError):
        agg.add(codec, Encoded(*topk_payload(single_varints([0] * 49 + [952]))), 5.0)
    assert agg.count == 1 and agg.total_weight == 1.0
    np.testing.assert_array_equal(agg.finish(), codec.decode(good, N))
