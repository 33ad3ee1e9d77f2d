"""Secure aggregation (SecAgg+, Bell et al. 2020): the server learns only the sum of updates.

Pure NumPy and hashlib, the same in CPython and Pyodide: quantization mod 2^b
(``quantize``), bit-packing (``packing``), the SHAKE-256 mask generator (``prg``),
HKDF (``kdf``), Shamir sharing over GF(2^31-1) (``shamir``), the neighbour graph
(``graph``), masks and their removal (``masking``), share frames (``shares``), and the
two parties' stages (``client``, ``unmask``). X25519 and AES-GCM belong to the runtime:
WebCrypto in the browser's worker, ``cryptography`` natively (``native``); the core takes
their raw results (shared secrets, plaintexts) and does every derivation and check.
"""

from .client import ClientStage, Outgoing, PublicKeys, Reveal, SecAggClient
from .crypto import KeyAgreement
from .errors import OutOfStage, SecAggError
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
    "OutOfStage",
    "Outgoing",
    "PublicKeys",
    "Quantizer",
    "Reveal",
    "RoundSetup",
    "SecAggClient",
    "SecAggError",
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
