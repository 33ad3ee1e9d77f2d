"""The one grammar of every run setting written as a string (codec, rule, bound, ...).

A spec is ``name[:params]``; ``params`` is a comma-separated list of unnamed values
followed by ``key=value`` pairs. A codec chains such specs with ``+``. Parsing yields a
frozen ``Spec``; ``Params`` then reads each value with its type and range checked, so a
bad spec is refused with a ``SpecError`` that names the part at fault (``part``) and
the grammar of the setting, never with an ``OverflowError`` or a huge allocation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Params", "Spec", "SpecError", "parse_chain", "parse_params", "parse_spec"]

# Longer texts are refused before any parsing: no setting needs more.
MAX_SPEC_CHARS = 200


class SpecError(ValueError):
    """A spec that does not parse; ``part`` is the offending piece of it."""

    def __init__(self, what: str, text: object, part: str, why: str, grammar: str) -> None:
        super().__init__(f"invalid {what} {_show(text)}: {part}: {why}; grammar: {grammar}")
        self.what, self.part, self.why, self.grammar = what, part, why, grammar


@dataclass(frozen=True)
class Spec:
    """``name[:params]``, split but not yet interpreted: ``args`` unnamed, ``kwargs`` named."""

    name: str
    args: tuple[str, ...] = ()
    kwargs: tuple[tuple[str, str], ...] = ()


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_text(text: object, what: str, grammar: str) -> str:
    if not isinstance(text, str):
        raise SpecError(what, text, type(text).__name__, "not a string", grammar)
    if len(text) > MAX_SPEC_CHARS:
        raise SpecError(what, text, f"{len(text)} characters", f"longer than {MAX_SPEC_CHARS}", grammar)
    return text.strip().lower()


def parse_params(text: object, *, what: str, grammar: str) -> Spec:
    """A bare parameter list (``"5,x=3"``) as a ``Spec`` with an empty name."""
    text = _check_text(text, what, grammar)
    return _split(text, text, "", what, grammar)


def parse_spec(text: object, *, what: str, grammar: str) -> Spec:
    """``"name"`` or ``"name:p1,k=v"`` (case and spaces ignored) as a ``Spec``."""
    return _one(text, _check_text(text, what, grammar), what, grammar)


def parse_chain(text: object, *, what: str, grammar: str) -> tuple[Spec, ...]:
    """``"spec+spec+..."`` as one ``Spec`` a link (a codec's stages)."""
    clean = _check_text(text, what, grammar)
    return tuple(_one(text, link, what, grammar) for link in clean.split("+"))


def _one(text: object, clean: str, what: str, grammar: str) -> Spec:
    name, colon, rest = clean.partition(":")
    name = name.strip()
    if not name:
        raise SpecError(what, text, _show(clean), "no name", grammar)
    if not colon:
        return Spec(name)
    return _split(text, rest, name, what, grammar)


def _split(text: object, params: str, name: str, what: str, grammar: str) -> Spec:
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part in params.split(","):
        part = part.strip()
        if not part:
            raise SpecError(what, text, "an empty parameter", "remove the stray comma", grammar)
        key, eq, value = (s.strip() for s in part.partition("="))
        if not eq:
            if kwargs:
                raise SpecError(what, text, part, "unnamed parameter after named ones", grammar)
            args.append(part)
        elif not key or not value:
            raise SpecError(what, text, part, "expected key=value", grammar)
        elif key in kwargs:
            raise SpecError(what, text, key, "given twice", grammar)
        else:
            kwargs[key] = value
    return Spec(name, tuple(args), tuple(kwargs.items()))


class Params:
    """Reads a ``Spec``'s parameters, each by key, with type and range checked.

    ``positional`` names the keys the unnamed values stand for, in order; giving a key
    both ways is an error. ``done`` refuses any parameter nobody read.
    """

    def __init__(self, spec: Spec, text: object, *, what: str, grammar: str, positional: tuple[str, ...] = ()) -> None:
        self.text, self.what, self.grammar = text, what, grammar
        label = spec.name or what
        if len(spec.args) > len(positional):
            extra = spec.args[len(positional)]
            why = "takes no unnamed parameter" if not positional else f"takes at most {len(positional)} unnamed"
            raise SpecError(what, text, extra, f"{label} {why}", grammar)
        self._raw = dict(spec.kwargs)
        for key, value in zip(positional, spec.args):
            if key in self._raw:
                raise SpecError(what, text, key, "given twice", grammar)
            self._raw[key] = value
        self._label = label

    def error(self, part: str, why: str) -> SpecError:
        return SpecError(self.what, self.text, part, why, self.grammar)

    def keys(self) -> set[str]:
        """The keys not read yet."""
        return set(self._raw)

    def text_of(self, key: str) -> str | None:
        """The raw text under ``key`` (for a nested spec), or ``None`` if absent."""
        return self._raw.pop(key, None)

    def number(
        self, key: str, lo: float, hi: float = math.inf, *, open_lo: bool = False, open_hi: bool = False
    ) -> float | None:
        """The finite number under ``key`` in the range, or ``None`` if absent."""
        raw = self._raw.pop(key, None)
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise self.error(f"{key}={raw}", "not a number") from None
        ok = (value > lo if open_lo else value >= lo) and (value < hi if open_hi else value <= hi)
        if not (math.isfinite(value) and ok):
            rng = f"{'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
            raise self.error(f"{key}={raw}", f"must be a number in {rng}")
        return value

    def integer(self, key: str, lo: int, hi: int) -> int | None:
        """The integer under ``key`` in ``[lo, hi]``, or ``None`` if absent."""
        raw = self._raw.pop(key, None)
        if raw is None:
            return None
        # Digits only and at most 12 of them: int() of a huge string is slow, then overflows later.
        digits = raw.lstrip("+-")
        if not (digits.isdigit() and len(digits) <= 12) or not lo <= int(raw) <= hi:
            raise self.error(f"{key}={raw}", f"must be an integer in [{lo}, {hi}]")
        return int(raw)

    def done(self) -> None:
        """Refuse whatever was not read: an unknown or misplaced parameter."""
        if self._raw:
            key = sorted(self._raw)[0]
            raise self.error(f"{key}={self._raw[key]}", f"{self._label} has no parameter {key}")
