"""Secure aggregation (SecAgg+, Bell et al. 2020): the server learns only the sum of updates.

Pure NumPy and hashlib, the same in CPython and Pyodide: quantization mod 2^b
(``quantize``), bit-packing (``packing``), the SHAKE-256 mask generator (``prg``),
HKDF (``kdf``), Shamir sharing over GF(2^31-1) (``shamir``), the neighbour graph
(``graph``), masks and their removal (``masking``), sealed share framing (``shares``),
and the two parties' stages (``client``, ``unmask``). X25519 and AES-GCM come from the
runtime through the ``crypto`` interfaces (``native`` natively, WebCrypto in the browser).
"""

from .client import ClientStage, PublicKeys, Reveal, SecAggClient
from .crypto import KeyAgreement, ShareCipher
from .errors import SecAggError
from .graph import NeighbourGraph, default_degree
from .packing import pack_bits, packed_size, unpack_bits
from .prg import expand
from .quantize import Quantizer, modulus_bits
from .setup import RoundSetup
from .shamir import ShareError, combine, split
from .unmask import Unmasker, UnmaskerState

__all__ = [
    "ClientStage",
    "KeyAgreement",
    "NeighbourGraph",
    "PublicKeys",
    "Quantizer",
    "Reveal",
    "RoundSetup",
    "SecAggClient",
    "SecAggError",
    "ShareCipher",
    "ShareError",
    "Unmasker",
    "UnmaskerState",
    "combine",
    "default_degree",
    "expand",
    "modulus_bits",
    "pack_bits",
    "packed_size",
    "split",
    "unpack_bits",
]
