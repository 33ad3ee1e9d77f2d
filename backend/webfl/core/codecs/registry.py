"""Codec specs: the grammar, the stage names volunteers advertise, and ``get_codec``."""

from __future__ import annotations

from .base import Codec
from .dense import Dense
from .quantize import Quant
from .rotation import Rotated
from .topk import TopK
from .values import Half, Raw, ValueStage
from ..specs import Params, SpecError, parse_chain

__all__ = ["CODECS", "GRAMMAR", "get_codec"]

#: The stage names a volunteer advertises in ``hello``; a spec is usable by a
#: volunteer that advertises all of ``get_codec(spec).stages``.
CODECS = ("none", "fp16", "q8", "q4", "q2", "q1", "rot", "topk")
GRAMMAR = "none | [topk:F+][rot+](q1|q2|q4|q8|fp16) | topk:F, with 0 < F <= 1 and rot only before a quantizer"
WHAT = "codec spec"

_VALUE_STAGES = {"fp16": Half, "q8": lambda: Quant(8), "q4": lambda: Quant(4), "q2": lambda: Quant(2), "q1": lambda: Quant(1)}


def get_codec(spec: str) -> Codec:
    """The codec a spec string names (see ``GRAMMAR``); ``SpecError`` (a ``ValueError``) if invalid.

    Case and surrounding spaces are ignored; ``Codec.spec`` is the canonical form.
    """
    links = list(parse_chain(spec, what=WHAT, grammar=GRAMMAR))

    def fail(part: str, why: str) -> SpecError:
        return SpecError(WHAT, spec, part, why, GRAMMAR)

    fraction = None
    if links[0].name == "topk":
        params = Params(links.pop(0), spec, what=WHAT, grammar=GRAMMAR, positional=("f",))
        fraction = params.number("f", 0, 1, open_lo=True)
        params.done()
        if fraction is None:
            raise fail("topk", "needs its fraction, e.g. topk:0.01")
    for link in links:  # every other stage takes no parameter
        Params(link, spec, what=WHAT, grammar=GRAMMAR).done()
    names = [link.name for link in links]
    if names == ["none"] and fraction is None:
        return Dense(Raw(), deflate=False)
    rotate = names[:1] == ["rot"]
    if rotate:
        names.pop(0)
    if len(names) > 1 or (names and names[0] not in _VALUE_STAGES):
        raise fail("+".join(names), "unexpected stage(s)")
    values: ValueStage = _VALUE_STAGES[names[0]]() if names else Raw()
    if rotate:
        if not isinstance(values, Quant):
            raise fail("rot", "must be followed by q1, q2, q4 or q8")
        values = Rotated(values)
    if fraction is None:
        if isinstance(values, Raw):
            raise fail("rot" if rotate else "(nothing)", "nothing to do")
        return Dense(values)
    return TopK(fraction, values)
