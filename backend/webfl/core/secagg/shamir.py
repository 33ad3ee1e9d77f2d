"""Shamir secret sharing of 32-byte secrets over GF(p), p = 2^31 - 1, vectorised over secrets.

A secret is cut into 11 field elements of 3 bytes each (24 bits < p), and each element
gets its own random polynomial of degree t-1 whose constant term it is; share x is the
11 evaluations at x, 44 bytes. Field elements stay below 2^31, so a product of two is
below 2^62 and every step is exact in int64: no big integers, no overflow.
Coefficients come from the OS (``os.urandom``), never from a run's seed.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import SecAggError

__all__ = ["PRIME", "SHARE_BYTES", "ShareError", "combine", "split"]

PRIME = (1 << 31) - 1
SECRET_BYTES = 32
CHUNK = 3  # bytes a field element carries
ELEMENTS = -(-SECRET_BYTES // CHUNK)  # 11
SHARE_BYTES = 4 * ELEMENTS


class ShareError(SecAggError):
    """Shares that cannot give back a secret: too few, repeated, malformed or inconsistent."""


def _random_elements(shape: tuple[int, ...]) -> np.ndarray:
    """Uniform elements of GF(p) from the OS: 31 random bits, the one value p redrawn."""
    size = int(np.prod(shape))
    out = np.frombuffer(os.urandom(4 * size), "<u4").astype(np.int64) & PRIME
    while (bad := out == PRIME).any():
        out[bad] = np.frombuffer(os.urandom(4 * int(bad.sum())), "<u4").astype(np.int64) & PRIME
    return out.reshape(shape)


def _to_elements(secrets: list[bytes]) -> np.ndarray:
    if any(len(s) != SECRET_BYTES for s in secrets):
        raise ValueError(f"a shared secret has {SECRET_BYTES} bytes")
    raw = np.frombuffer(b"".join(s + bytes(ELEMENTS * CHUNK - SECRET_BYTES) for s in secrets), np.uint8)
    limbs = raw.reshape(len(secrets), ELEMENTS, CHUNK).astype(np.int64)
    return limbs[..., 0] | limbs[..., 1] << 8 | limbs[..., 2] << 16


def _from_elements(elements: np.ndarray) -> list[bytes]:
    if (elements >> (8 * CHUNK)).any():
        raise ShareError("the shares do not belong to one secret (a value is out of range)")
    raw = np.stack([elements & 0xFF, elements >> 8 & 0xFF, elements >> 16], axis=-1).astype(np.uint8)
    if raw.reshape(len(elements), -1)[:, SECRET_BYTES:].any():
        raise ShareError("the shares do not belong to one secret (padding is not zero)")
    return [row.tobytes()[:SECRET_BYTES] for row in raw.reshape(len(elements), -1)]


def _check_points(xs: np.ndarray) -> None:
    if ((xs < 1) | (xs >= PRIME)).any():
        raise ShareError("share points must be in 1..p-1")
    if np.unique(xs).size != xs.size:
        raise ShareError("share points must be distinct")


def split(secrets: list[bytes], points: list[int], threshold: int) -> np.ndarray:
    """Shares of each secret at each point: bytes of shape (len(points), len(secrets), 44).

    Any ``threshold`` of a secret's shares give it back; fewer reveal nothing about it.
    """
    xs = np.asarray(points, dtype=np.int64)
    _check_points(xs)
    if not 1 <= threshold <= xs.size:
        raise ValueError(f"the threshold must be in 1..{xs.size} (the number of shares), not {threshold}")
    acc = np.broadcast_to(_to_elements(secrets), (xs.size, len(secrets), ELEMENTS)).copy()
    if threshold > 1:
        coeffs = _random_elements((threshold - 1, len(secrets), ELEMENTS))
        # Horner from the top coefficient down; the constant term (the secret) comes last.
        poly = coeffs[-1][None].repeat(xs.size, axis=0)
        for c in coeffs[-2::-1]:
            poly = (poly * xs[:, None, None] + c) % PRIME
        acc = (poly * xs[:, None, None] + acc) % PRIME
    return acc.astype("<u4").view(np.uint8).reshape(xs.size, len(secrets), SHARE_BYTES)


def _lagrange_at(xs: list[int], at: int) -> np.ndarray:
    """Weights w_i with f(at) = sum w_i f(xs[i]) for any polynomial of degree < len(xs)."""
    weights = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (at - xj) % PRIME
                den = den * (xi - xj) % PRIME
        weights.append(num * pow(den, PRIME - 2, PRIME) % PRIME)
    return np.asarray(weights, dtype=np.int64)


def _interpolate(xs: list[int], ys: np.ndarray, at: int) -> np.ndarray:
    out = np.zeros(ys.shape[1:], np.int64)
    for w, y in zip(_lagrange_at(xs, at), ys):
        out = (out + w * y) % PRIME
    return out


def combine(points: list[int], shares: np.ndarray, threshold: int) -> list[bytes]:
    """The secrets from shares (len(points), m, 44) at ``points``; refuses fewer than ``threshold``.

    Shares beyond the threshold are checked against the polynomial the first ``threshold``
    define, so a corrupted or mismatched share is refused instead of giving a wrong secret.
    """
    xs = np.asarray(points, dtype=np.int64)
    _check_points(xs)
    if threshold < 1:
        raise ValueError("the threshold must be >= 1")
    if xs.size < threshold:
        raise ShareError(f"{xs.size} shares cannot rebuild a secret shared with threshold {threshold}")
    shares = np.ascontiguousarray(shares, dtype=np.uint8)
    if shares.ndim != 3 or shares.shape[0] != xs.size or shares.shape[2] != SHARE_BYTES:
        raise ShareError(f"shares must have shape ({xs.size}, secrets, {SHARE_BYTES})")
    ys = shares.view("<u4").astype(np.int64)
    if (ys >= PRIME).any():
        raise ShareError("a share value is not an element of the field")
    base = [int(x) for x in xs[:threshold]]
    for x, y in zip(xs[threshold:], ys[threshold:]):
        if not np.array_equal(_interpolate(base, ys[:threshold], int(x)), y):
            raise ShareError(f"the share at point {int(x)} is inconsistent with the others")
    return _from_elements(_interpolate(base, ys[:threshold], 0))
