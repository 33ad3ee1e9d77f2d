"""Update codecs: how a model delta becomes the arrays of an ``update`` frame.

Communication is the bottleneck of federated learning (Konečný et al. 2016), so the
admin picks a codec per run with a spec string::

    spec  := "none" | [topk "+"] [rot "+"] value | topk
    topk  := "topk:" F        keep the round(F * n) largest-magnitude entries, 0 < F <= 1
    rot   := "rot"            randomized Hadamard rotation; only before a quantizer
    value := "q1" | "q2" | "q4" | "q8" | "fp16"    (omitted after topk: float32 values)

e.g. ``none``, ``fp16``, ``q8``, ``rot+q2``, ``topk:0.01``, ``topk:0.01+q8``.

``encode`` runs on the volunteer; ``decode`` and ``accumulate`` run on the server and
validate the whole payload, raising ``CodecError`` with a reason, before anything
is written. Wire layout (``params``; ``arrays``), n values per stage:

    none       {}; <f4[n]
    fp16       {exp}; <f2[n] holding x * 2**-exp
    qB         {}; |u1[ceil(n*B/8)] codes, <f4[ceil(n/256), 2] (low, step) per block
    rot+qB     {seed} + qB's
    topk:F+V   {index: "varint", index_bytes} or {index: "bitmap"} + V's params;
               |u1 index bytes, then V's arrays for the k kept values

Every codec but ``none`` then deflates its arrays into one ``|u1`` array, flagged
``deflate: true``, when that makes them smaller.
"""

from __future__ import annotations

import math
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CODECS", "GRAMMAR", "Codec", "CodecError", "Encoded", "ErrorFeedback", "get_codec"]

#: The stage names a volunteer advertises in ``hello``; a spec is usable by a
#: volunteer that advertises all of ``get_codec(spec).stages``.
CODECS = ("none", "fp16", "q8", "q4", "q2", "q1", "rot", "topk")
GRAMMAR = "none | [topk:F+][rot+](q1|q2|q4|q8|fp16) | topk:F, with 0 < F <= 1 and rot only before a quantizer"

BLOCK = 256  # values per quantization block; its (low, step) costs 0.25 bit per value
MAX_SEED = 2**31 - 1
MAX_EXP = 200  # fp16 scale exponents beyond float32's range only ever decode to Inf

Layout = list[tuple[str, tuple[int, ...]]]


class CodecError(ValueError):
    """A payload that does not decode to a valid update of the expected size.

    ``kind`` is how the server counts the rejection: ``"nan"`` for NaN or Inf values,
    ``"malformed"`` for anything else.
    """

    def __init__(self, message: str, kind: str = "malformed") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Encoded:
    """What a codec puts on the wire: JSON-able parameters and raw arrays."""

    params: dict = field(default_factory=dict)
    arrays: tuple[np.ndarray, ...] = ()

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


# -- parameters and arrays off the wire -------------------------------------------


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Params:
    """Codec parameters from the wire, each read with its type and range checked."""

    def __init__(self, params: object) -> None:
        if not isinstance(params, dict):
            raise CodecError("codec parameters must be an object")
        self._raw = params
        self._read: set = set()

    def __getitem__(self, key: str):
        return self._raw[key]

    def _get(self, key: str):
        if key not in self._raw:
            raise CodecError(f"missing codec parameter {key!r}")
        self._read.add(key)
        return self._raw[key]

    def int(self, key: str, lo: int, hi: int) -> int:
        value = self._get(key)
        # bool is an int subclass; JSON true is never a valid integer here.
        if type(value) is not int or not lo <= value <= hi:
            raise CodecError(f"codec parameter {key!r} must be an integer in [{lo}, {hi}], got {_show(value)}")
        return value

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self._get(key)
        if not (isinstance(value, str) and value in options):
            raise CodecError(f"codec parameter {key!r} must be one of {', '.join(options)}, got {_show(value)}")
        return value

    def flag(self, key: str) -> bool:
        if key not in self._raw:
            return False
        if self._get(key) is not True:
            raise CodecError(f"codec parameter {key!r} must be true when present")
        return True

    def done(self) -> None:
        extra = [_show(k) for k in self._raw if k not in self._read]
        if extra:
            raise CodecError(f"unexpected codec parameter(s) {', '.join(extra[:5])}")


def _check_arrays(arrays: object, layout: Layout) -> list[np.ndarray]:
    if not isinstance(arrays, (tuple, list)) or len(arrays) != len(layout):
        got = len(arrays) if isinstance(arrays, (tuple, list)) else _show(arrays)
        raise CodecError(f"expected {len(layout)} array(s), got {got}")
    for i, (a, (dtype, shape)) in enumerate(zip(arrays, layout)):
        if not isinstance(a, np.ndarray) or a.dtype != np.dtype(dtype) or a.shape != shape:
            got = f"{a.dtype.str} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise CodecError(f"array {i} must be {dtype} of shape {shape}, got {got}")
    return list(arrays)


def _deflate(params: dict, arrays: list[np.ndarray]) -> tuple[dict, list[np.ndarray]]:
    """Deflate the arrays' bytes into one array, only if that is smaller."""
    raw = b"".join(a.tobytes() for a in arrays)
    # Run-length matching only: codes of unbiased quantizers have few long matches, so
    # this compresses as well as the default on deltas (runs of exact zeros included)
    # at 3-5x the speed, which matters in a browser.
    deflater = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    packed = deflater.compress(raw) + deflater.flush()
    if len(packed) >= len(raw):
        return params, arrays
    return {**params, "deflate": True}, [np.frombuffer(packed, np.uint8)]


def _inflate(arrays: object, layout: Layout) -> list[np.ndarray]:
    """The arrays of ``layout`` from one deflated array, inflating no more than they need."""
    if not (isinstance(arrays, (tuple, list)) and len(arrays) == 1 and isinstance(arrays[0], np.ndarray)):
        raise CodecError("a deflated payload must be exactly one array")
    blob = arrays[0]
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise CodecError(f"a deflated payload must be a 1-D |u1 array, got {blob.dtype.str} {blob.shape}")
    expected = sum(math.prod(shape) * np.dtype(dtype).itemsize for dtype, shape in layout)
    inflater = zlib.decompressobj()
    try:
        # The output bound is what stops a zip bomb; one spare byte detects "too long".
        raw = inflater.decompress(np.ascontiguousarray(blob), expected + 1)
    except zlib.error as exc:
        raise CodecError(f"deflated payload is corrupt ({exc})") from None
    if len(raw) != expected or not inflater.eof or inflater.unused_data:
        raise CodecError(f"deflated payload must inflate to exactly {expected} bytes and end there")
    out, offset = [], 0
    for dtype, shape in layout:
        a = np.frombuffer(raw, dtype, math.prod(shape), offset).reshape(shape)
        out.append(a)
        offset += a.nbytes
    return out


def _check_finite(values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise CodecError("update contains NaN or Inf", "nan")
    return values


# -- value stages: any float32 vector <-> params and arrays -------------------------


class _Values(ABC):
    """How a stage codes a float32 vector of any length n."""

    stages: tuple[str, ...]

    @abstractmethod
    def encode(self, x: np.ndarray, rng: np.random.Generator) -> tuple[dict, list[np.ndarray]]:
        """Parameters and arrays for the finite float32 vector ``x``."""

    @abstractmethod
    def layout(self, p: _Params, n: int) -> Layout:
        """Check this stage's parameters; the arrays it expects for ``n`` values."""

    @abstractmethod
    def decode(self, p: _Params, arrays: list[np.ndarray], n: int) -> np.ndarray:
        """The float32 values; the caller checks them for NaN and Inf."""


class _Raw(_Values):
    """float32 as is."""

    stages = ()

    def encode(self, x, rng):
        return {}, [x.astype("<f4", copy=False)]

    def layout(self, p, n):
        return [("<f4", (n,))]

    def decode(self, p, arrays, n):
        return arrays[0]


class _Half(_Values):
    """IEEE half precision after an exact power-of-two scaling.

    The scale puts the largest magnitude just under 2**15, so small deltas keep 11
    significant bits instead of sinking into fp16 subnormals, and large weights
    cannot overflow.
    """

    stages = ("fp16",)

    def encode(self, x, rng):
        peak = float(np.abs(x).max())
        exp = math.frexp(peak)[1] - 15 if peak else 0
        return {"exp": exp}, [np.ldexp(x, -exp).astype("<f2")]

    def layout(self, p, n):
        p.int("exp", -MAX_EXP, MAX_EXP)
        return [("<f2", (n,))]

    def decode(self, p, arrays, n):
        return np.ldexp(arrays[0].astype(np.float32), p["exp"])


class _Quant(_Values):
    """Unbiased stochastic ``bits``-bit quantization with per-block scales.

    Each block of ``BLOCK`` values gets 2**bits evenly spaced levels from its minimum
    to its maximum; a value goes to one of its two neighbouring levels with the
    probabilities that make the expected result exactly the value (QSGD-style,
    Alistarh et al. 2017), so the error is below one step and averages out.
    Codes are packed little-end first, 8 // bits per byte.
    """

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.levels = 2**bits
        self.stages = (f"q{bits}",)

    def encode(self, x, rng):
        n = x.size
        blocks = -(-n // BLOCK)
        # Pad with the last value: it leaves the last block's minimum and maximum alone.
        padded = np.full(blocks * BLOCK, x[-1], np.float32)
        padded[:n] = x
        padded = padded.reshape(blocks, BLOCK)
        low = padded.min(axis=1)
        with np.errstate(over="ignore"):  # a range beyond float32 is refused just below
            step = (padded.max(axis=1) - low) / np.float32(self.levels - 1)
        if not np.isfinite(step).all():
            raise ValueError("values too large to quantize in float32")
        inverse = np.divide(1, step, out=np.zeros_like(step), where=step > 0)
        scaled = (padded - low[:, None]) * inverse[:, None]
        scaled += rng.random(scaled.shape, dtype=np.float32)
        codes = np.clip(np.floor(scaled, out=scaled), 0, self.levels - 1, out=scaled).astype(np.uint8)
        return {}, [_pack(codes.reshape(-1)[:n], self.bits), np.stack([low, step], axis=1).astype("<f4")]

    def layout(self, p, n):
        return [("|u1", (-(-n * self.bits // 8),)), ("<f4", (-(-n // BLOCK), 2))]

    def decode(self, p, arrays, n):
        packed, scales = arrays
        if not np.isfinite(scales).all():
            raise CodecError("quantization scales contain NaN or Inf", "nan")
        if (scales[:, 1] < 0).any():
            raise CodecError("quantization steps must not be negative")
        tail = n * self.bits % 8
        if tail and packed[-1] >> tail:
            raise CodecError("unused bits of the last code byte must be zero")
        codes = np.zeros(scales.shape[0] * BLOCK, np.uint8)
        codes[:n] = _unpack(packed, self.bits, n)
        values = codes.reshape(-1, BLOCK) * scales[:, 1:] + scales[:, :1]
        return values.reshape(-1)[:n]


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return codes
    per = 8 // bits
    lanes = np.zeros(-(-codes.size // per) * per, np.uint8)
    lanes[: codes.size] = codes
    lanes = lanes.reshape(-1, per)
    out = lanes[:, 0].copy()
    for j in range(1, per):  # one vectorised pass per code slot of a byte
        out |= lanes[:, j] << np.uint8(bits * j)
    return out


def _unpack(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    if bits == 8:
        return packed
    per = 8 // bits
    codes = np.empty((packed.size, per), np.uint8)
    for j in range(per):
        codes[:, j] = (packed >> np.uint8(bits * j)) & np.uint8(2**bits - 1)
    return codes.reshape(-1)[:n]


class _Rotated(_Values):
    """A randomized Hadamard rotation before quantization (Suresh et al. 2017).

    Rotating spreads outliers over many coordinates, shrinking each block's range
    and so the quantization error. Only the seed of the random signs is sent.
    """

    def __init__(self, inner: _Quant) -> None:
        self.inner = inner
        self.stages = ("rot", *inner.stages)

    def encode(self, x, rng):
        seed = int(rng.integers(MAX_SEED + 1))
        params, arrays = self.inner.encode(_rotate(x, seed), rng)
        return {"seed": seed, **params}, arrays

    def layout(self, p, n):
        p.int("seed", 0, MAX_SEED)
        return self.inner.layout(p, n)

    def decode(self, p, arrays, n):
        return _rotate(self.inner.decode(p, arrays, n), p["seed"], inverse=True)


def _rotate(x: np.ndarray, seed: int, inverse: bool = False) -> np.ndarray:
    """``H D x`` (``inverse``: ``D H x``) with D random signs from ``seed``.

    H is orthonormal Walsh-Hadamard on each power-of-two segment of the binary
    decomposition of ``len(x)``: no padding, so the payload stays n values long.
    """
    signs = _signs(seed, x.size)
    y = np.array(x, dtype=np.float32) if inverse else x * signs
    start = 0
    for p in reversed(range(x.size.bit_length())):
        if x.size >> p & 1:
            _fwht(y[start : start + 2**p])
            start += 2**p
    if inverse:
        y *= signs
    return y


def _signs(seed: int, n: int) -> np.ndarray:
    """±1 per entry from the raw PCG64 stream.

    NumPy keeps bit generators' streams fixed across versions (``Generator`` methods
    may change), so the browser's NumPy and the server's draw the same signs.
    """
    words = np.random.PCG64(seed).random_raw(-(-n // 64)).astype("<u8")
    bits = np.unpackbits(words.view(np.uint8), count=n, bitorder="little")
    return np.float32(1) - np.float32(2) * bits


def _fwht(v: np.ndarray) -> None:
    """In-place orthonormal fast Walsh-Hadamard transform of a power-of-two-long view."""
    n = v.size
    # The butterflies of span < 32 would stride through tiny rows (slow in NumPy), so
    # they run on the transposed (32, n/32) matrix, where each is a whole-row operation.
    rows = min(n, 32)
    t = np.ascontiguousarray(v.reshape(-1, rows).T)
    _butterflies(t.reshape(-1), t.shape[1])
    v.reshape(-1, rows)[...] = t.T
    _butterflies(v, rows)
    v *= np.float32(1 / math.sqrt(n))


def _butterflies(v: np.ndarray, h: int) -> None:
    """The unnormalised Walsh-Hadamard stages of span h, 2h, ... < len(v), in place."""
    while h < v.size:
        pairs = v.reshape(-1, 2, h)
        total = pairs[:, 0] + pairs[:, 1]
        np.subtract(pairs[:, 0], pairs[:, 1], out=pairs[:, 1])
        pairs[:, 0] = total
        h *= 2


# -- codecs -------------------------------------------------------------------------


class Codec(ABC):
    """A spec's encoder and validating decoder; instances come from ``get_codec``."""

    spec: str
    stages: tuple[str, ...]
    deflate = True

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> Encoded:
        """Compress the float32 vector ``x``; ``ValueError`` if it is empty or not finite."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"can only encode a non-empty vector, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("cannot encode NaN or Inf")
        params, arrays = self._encode(x, rng)
        if self.deflate:
            params, arrays = _deflate(params, arrays)
        return Encoded(params, tuple(arrays))

    @abstractmethod
    def decode(self, enc: Encoded, size: int) -> np.ndarray:
        """The float32 vector of length ``size`` that ``enc`` stands for."""

    def accumulate(self, acc: np.ndarray, weight: float, enc: Encoded) -> None:
        """``acc += weight * decode(enc)``, without a float64 copy of the update."""
        values = self.decode(enc, acc.shape[0])
        np.add(acc, values * np.float32(weight), out=acc, casting="unsafe")

    def _open(self, enc: Encoded, size: int) -> tuple[_Params, list[np.ndarray]]:
        """Check every parameter and array shape; inflate if deflated."""
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise CodecError(f"size must be a positive integer, got {_show(size)}")
        p = _Params(enc.params)
        deflated = self.deflate and p.flag("deflate")
        layout = self._layout(p, size)
        p.done()
        return p, _inflate(enc.arrays, layout) if deflated else _check_arrays(enc.arrays, layout)

    @abstractmethod
    def _encode(self, x: np.ndarray, rng: np.random.Generator) -> tuple[dict, list[np.ndarray]]: ...

    @abstractmethod
    def _layout(self, p: _Params, size: int) -> Layout: ...

    def __repr__(self) -> str:
        return f"get_codec({self.spec!r})"


class Dense(Codec):
    """Every value, coded by a value stage."""

    def __init__(self, values: _Values, deflate: bool = True) -> None:
        self.values = values
        self.deflate = deflate
        self.stages = values.stages or ("none",)
        self.spec = "+".join(self.stages)

    def _encode(self, x, rng):
        return self.values.encode(x, rng)

    def _layout(self, p, size):
        return self.values.layout(p, size)

    def decode(self, enc, size):
        p, arrays = self._open(enc, size)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught as Inf
            return _check_finite(self.values.decode(p, arrays, size))


class TopK(Codec):
    """The k = round(fraction * n) largest-magnitude entries (at least one).

    Biased: pair it with ``ErrorFeedback`` on the volunteer. Indices are sent as
    a bitmap or as varint gaps, whichever is smaller; the values by a value stage.
    """

    def __init__(self, fraction: float, values: _Values) -> None:
        self.fraction = fraction
        self.values = values
        self.stages = ("topk", *values.stages)
        self.spec = "+".join((f"topk:{fraction!r}", *values.stages))

    def k(self, n: int) -> int:
        return min(n, max(1, round(self.fraction * n)))

    def _encode(self, x, rng):
        n, k = x.size, self.k(x.size)
        idx = np.sort(np.argpartition(np.abs(x), n - k)[n - k :])
        varint = _varint_encode(idx)
        if varint.size <= -(-n // 8):
            index, head = {"index": "varint", "index_bytes": varint.size}, varint
        else:
            mask = np.zeros(n, bool)
            mask[idx] = True
            index, head = {"index": "bitmap"}, np.packbits(mask, bitorder="little")
        params, arrays = self.values.encode(x[idx], rng)
        return {**index, **params}, [head, *arrays]

    def _layout(self, p, size):
        k = self.k(size)
        if p.choice("index", ("varint", "bitmap")) == "varint":
            head = ("|u1", (p.int("index_bytes", k, 5 * k),))
        else:
            head = ("|u1", (-(-size // 8),))
        return [head, *self.values.layout(p, k)]

    def _parts(self, enc: Encoded, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The validated indices (strictly increasing) and their finite values."""
        p, arrays = self._open(enc, size)
        k = self.k(size)
        read = _varint_indices if p["index"] == "varint" else _bitmap_indices
        idx = read(arrays[0], k, size)
        with np.errstate(over="ignore", invalid="ignore"):
            return idx, _check_finite(self.values.decode(p, arrays[1:], k))

    def decode(self, enc, size):
        idx, values = self._parts(enc, size)
        dense = np.zeros(size, np.float32)
        dense[idx] = values
        return dense

    def accumulate(self, acc, weight, enc):
        idx, values = self._parts(enc, acc.shape[0])
        acc[idx] += np.float64(weight) * values  # indices are unique, so no add.at


def _varint_encode(idx: np.ndarray) -> np.ndarray:
    """LEB128 varints of the gaps between sorted indices, less one.

    Less one, so that any varint stream decodes to strictly increasing indices:
    repeated or unsorted indices cannot even be expressed.
    """
    gaps = np.diff(idx, prepend=-1) - 1
    lengths = np.searchsorted(np.array([2**7, 2**14, 2**21, 2**28]), gaps, side="right") + 1
    starts = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()), np.uint8)
    for j in range(int(lengths.max())):  # one vectorised pass per byte position
        has = lengths > j
        more = np.where(lengths[has] > j + 1, 0x80, 0)
        out[starts[has] + j] = (gaps[has] >> (7 * j)) & 0x7F | more
    return out


def _varint_indices(buf: np.ndarray, k: int, size: int) -> np.ndarray:
    ends = np.flatnonzero(buf < 0x80)
    if ends.size != k or ends[-1] != buf.size - 1:
        raise CodecError(f"index bytes must hold exactly {k} complete varints")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 5:
        raise CodecError("an index varint is longer than 5 bytes")
    if (buf[ends[lengths > 1]] == 0).any():
        raise CodecError("an index varint is not minimally encoded")
    gaps = np.zeros(k, np.int64)
    for j in range(int(lengths.max())):
        has = lengths > j
        gaps[has] |= (buf[starts[has] + j] & 0x7F).astype(np.int64) << (7 * j)
    # Bounding each gap first also keeps the running sum far from int64 overflow.
    idx = np.cumsum(gaps + 1) - 1 if gaps.max() < size else None
    if idx is None or idx[-1] >= size:
        raise CodecError(f"an index is out of range for a vector of {size}")
    return idx


def _bitmap_indices(buf: np.ndarray, k: int, size: int) -> np.ndarray:
    idx = np.flatnonzero(np.unpackbits(buf, bitorder="little"))
    if idx.size != k:
        raise CodecError(f"index bitmap has {idx.size} bits set, expected {k}")
    if idx[-1] >= size:
        raise CodecError(f"index bitmap sets a bit past the end of a vector of {size}")
    return idx


class ErrorFeedback:
    """Volunteer-side error feedback (Seide et al. 2014; Stich et al. 2018).

    What a biased codec such as top-k drops this round is added to the next round's
    delta, so nothing is lost, only delayed. The residual never leaves the volunteer;
    ``state``/``load_state`` let the browser keep it (e.g. in IndexedDB). Harmless,
    if pointless, with unbiased codecs.
    """

    def __init__(self, codec: Codec, size: int) -> None:
        self.codec = codec
        self.residual = np.zeros(size, np.float32)

    def encode(self, delta: np.ndarray, rng: np.random.Generator) -> Encoded:
        target = self.residual + np.asarray(delta, dtype=np.float32)
        enc = self.codec.encode(target, rng)
        self.residual = target - self.codec.decode(enc, target.size)
        return enc

    def state(self) -> np.ndarray:
        return self.residual.copy()

    def load_state(self, residual: np.ndarray) -> None:
        residual = np.asarray(residual)
        if residual.shape != self.residual.shape or not np.isfinite(residual).all():
            raise ValueError(f"residual must be {self.residual.size} finite values, got shape {residual.shape}")
        self.residual = residual.astype(np.float32)


_VALUE_STAGES = {"fp16": _Half, "q8": lambda: _Quant(8), "q4": lambda: _Quant(4), "q2": lambda: _Quant(2), "q1": lambda: _Quant(1)}


def get_codec(spec: str) -> Codec:
    """The codec a spec string names (see ``GRAMMAR``); ``ValueError`` for an invalid one.

    Case and surrounding spaces are ignored; ``Codec.spec`` is the canonical form.
    """

    def invalid(why: str) -> ValueError:
        return ValueError(f"invalid codec spec {_show(spec)}: {why}; grammar: {GRAMMAR}")

    if not isinstance(spec, str):
        raise invalid("not a string")
    stages = spec.strip().lower().split("+")
    if stages == ["none"]:
        return Dense(_Raw(), deflate=False)
    fraction = None
    if stages[0].startswith("topk:"):
        try:
            fraction = float(stages.pop(0)[5:])
        except ValueError:
            raise invalid("the top-k fraction is not a number") from None
        if not 0 < fraction <= 1:
            raise invalid("the top-k fraction must be in (0, 1]")
    rotate = stages[:1] == ["rot"]
    if rotate:
        stages.pop(0)
    if len(stages) > 1 or (stages and stages[0] not in _VALUE_STAGES):
        raise invalid(f"unexpected {'+'.join(stages)!r}")
    values = _VALUE_STAGES[stages[0]]() if stages else _Raw()
    if rotate:
        if not isinstance(values, _Quant):
            raise invalid("rot must be followed by q1, q2, q4 or q8")
        values = _Rotated(values)
    if fraction is None:
        if isinstance(values, _Raw):
            raise invalid("nothing to do")
        return Dense(values)
    return TopK(fraction, values)
