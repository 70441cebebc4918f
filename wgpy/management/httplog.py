"""One log line, without the request's bytes, for an HTTP request that aiohttp's parser refuses.

aiohttp answers a request it cannot parse (a control character in a header, a byte that is not allowed in the URL,
a method that is no token...) with a 400 of its own before any handler runs, and logs it on ``aiohttp.server``
with a traceback whose exception message quotes the offending line: ``Authorization: Bearer <the token>`` as sent.
The secret is the client's own, but it must not reach the server's log. ``MalformedRequestFilter`` rewrites such a
record into one line that names the client and the parser's reason (the first line of its message, which names the
kind of fault and never the bytes) and drops the traceback; every other record passes unchanged. The 400 response
itself still quotes the line back to the client that sent it.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["MalformedRequestFilter", "quiet_malformed_requests"]

AIOHTTP_SERVER_LOGGER: Final = "aiohttp.server"


def _reason(exc: HttpProcessingError) -> str:
    """``Invalid header value char`` from ``Invalid header value char:\\n\\n  b'...'``: the kind of fault only."""
    lines = (exc.message or "").strip().splitlines()
    reason = lines[0].split(":", 1)[0].strip() if lines else ""
    return reason if reason.isprintable() and len(reason) <= 80 else type(exc).__name__


class MalformedRequestFilter(logging.Filter):
    """Turns aiohttp's record of a request its parser refused into one line with no request bytes in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.levelno, record.levelname = logging.WARNING, "WARNING"  # the client's fault, not the server's
        record.msg = "refused a malformed HTTP request from %s: %s"
        record.args = (remote, _reason(exc))
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


def quiet_malformed_requests(logger: logging.Logger) -> None:
    """Install the filter on ``logger`` (``aiohttp.server``, ``AIOHTTP_SERVER_LOGGER``), once."""
    if not any(isinstance(existing, MalformedRequestFilter) for existing in logger.filters):
        logger.addFilter(MalformedRequestFilter())
