"""Log output: human-readable text, or JSON lines (``--log-format json``) for log shippers.

A JSON line holds ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, every field
the call passed with ``extra=``, and ``exception`` when there is one. Untrusted text (a
volunteer's user agent, a close reason) is escaped by the JSON encoder, so a line break in
it cannot forge a second event.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from .logsafe import EscapingFilter

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging"]

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and key not in event:
                event[key] = value
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


def configure_logging(level: str, fmt: str) -> None:
    """Send every logger (uvicorn's too, which then must not install its own) to stderr."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(EscapingFilter())  # no untrusted text can forge a line
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
