"""Update codecs: how a model delta becomes the arrays of an ``update`` frame.

Communication is the bottleneck of federated learning (Konečný et al. 2016), so the
admin picks a codec per run with a spec string::

    spec  := "none" | [topk "+"] [rot "+"] value | topk
    topk  := "topk:" F        keep the round(F * n) largest-magnitude entries, 0 < F <= 1
    rot   := "rot"            randomized Hadamard rotation; only before a quantizer
    value := "q1" | "q2" | "q4" | "q8" | "fp16"    (omitted after topk: float32 values)

e.g. ``none``, ``fp16``, ``q8``, ``rot+q2``, ``topk:0.01``, ``topk:0.01+q8``.

``encode`` runs on the volunteer; ``decode`` and ``accumulate`` run on the server and
validate the whole payload, raising ``CodecError`` (with a ``kind``) before anything
is written. Wire layout (``params``; ``arrays``), n values per stage:

    none       {}; <f4[n]
    fp16       {exp}; <f2[n] holding x * 2**-exp
    qB         {}; |u1[ceil(n*B/8)] codes, <f4[ceil(n/256), 2] (low, step) per block
    rot+qB     {seed} + qB's
    topk:F+V   {index: "varint", index_bytes} or {index: "bitmap"} + V's params;
               |u1 index bytes, then V's arrays for the k kept values

Every codec but ``none`` then deflates its arrays into one ``|u1`` array, flagged
``deflate: true``, when that makes them smaller.

Modules: ``base`` (wire record, validation, deflate, ``Codec``), ``values`` (raw, fp16),
``quantize``, ``rotation``, ``index`` (varint and bitmap indices), ``dense``, ``topk``,
``feedback`` (error feedback) and ``registry`` (the grammar and ``get_codec``).
"""

from .base import Codec, CodecError, Encoded, RejectionKind
from .feedback import ErrorFeedback
from .quantize import BLOCK
from .registry import CODECS, GRAMMAR, get_codec

__all__ = ["BLOCK", "CODECS", "GRAMMAR", "Codec", "CodecError", "Encoded", "ErrorFeedback", "RejectionKind", "get_codec"]
