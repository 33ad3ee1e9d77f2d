"""Log lines cannot be forged: untrusted text is escaped before it is logged.

A volunteer's ``hello.agent``, a client address from a proxy header, a close reason
that quotes a frame: any of them could carry a newline and forge a line ("... INFO
webfl.engine: run 7 started") for whoever reads the log. ``untrusted`` escapes control
characters (newline, carriage return, escape sequences for terminals, other C0/C1 and
Unicode line separators) the way ``repr`` does, without quotes. ``EscapingFilter``
applies it to every argument of every record that reaches the server's log handler, so
a module that forgets to call it still cannot forge a line.
"""

from __future__ import annotations

import logging
import re

__all__ = ["EscapingFilter", "untrusted"]

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\\]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return "\\\\" if char == "\\" else char.encode("unicode_escape").decode("ascii")


def untrusted(text: object, limit: int = 200) -> str:
    """``text`` as one printable line, at most ``limit`` characters of it."""
    return _UNSAFE.sub(_escape, str(text)[:limit])


class EscapingFilter(logging.Filter):
    """Escapes every text argument of a record (the format string is the code's own).

    Exceptions count as text (their message may quote input); containers are logged
    through ``repr``, which escapes already.
    """

    @staticmethod
    def _safe(arg: object) -> object:
        return untrusted(arg, 2000) if isinstance(arg, (str, BaseException)) else arg

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(map(self._safe, record.args))
        elif isinstance(record.args, dict):
            record.args = {k: self._safe(v) for k, v in record.args.items()}
        return True
