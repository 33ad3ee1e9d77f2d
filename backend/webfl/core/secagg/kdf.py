"""HKDF-SHA256 (RFC 5869) on the standard library: pair-mask seeds and share-channel keys.

The browser's WebCrypto does only the X25519 agreement; the derivation from its raw
shared secret is this code in both runtimes, so both sides derive the same bytes.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["hkdf_sha256"]

HASH_BYTES = 32


def hkdf_sha256(secret: bytes, info: bytes, length: int = 32, salt: bytes = b"") -> bytes:
    """``length`` bytes of HKDF-SHA256 output keying material (extract, then expand)."""
    if not 0 < length <= 255 * HASH_BYTES:
        raise ValueError(f"HKDF-SHA256 gives 1..{255 * HASH_BYTES} bytes, not {length}")
    prk = hmac.new(salt or bytes(HASH_BYTES), secret, hashlib.sha256).digest()
    out, block = b"", b""
    for counter in range(1, -(-length // HASH_BYTES) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
    return out[:length]
