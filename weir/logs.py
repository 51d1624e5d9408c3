"""Logging set-up, done once per process; leaves an already configured root logger alone."""

from __future__ import annotations

import logging
import sys

from aiohttp.http_exceptions import HttpProcessingError


class KeyValueFormatter(logging.Formatter):
    """Formats `time level logger message` with the ids that callers pass in `extra`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")


def configure_logging(level: str = "info") -> None:
    """Send INFO and above (or `level`) to stderr, unless the root logger already has handlers."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if root.handlers:
        return

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root.addHandler(handler)
    # aiohttp's access log repeats every request; the services count requests in /metrics instead.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    quiet_malformed_requests()


MAX_DETAIL_CHARS = 300
"""Characters of a malformed request's error kept in its log line."""


class MalformedRequestFilter(logging.Filter):
    """Log filter that turns aiohttp's traceback of an unparsable request into one line, at WARNING at most.

    aiohttp responds to such a request (broken chunked framing, a bad header line) with 400 by
    itself and logs the parser's exception with its full traceback at ERROR. On a service that
    the public internet reaches, that is the client's mistake, not the server's. Records that
    aiohttp logs at DEBUG (such as TLS traffic on the plain port) keep their level.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        detail = " ".join(str(error.message).split())
        if len(detail) > MAX_DETAIL_CHARS:
            # aiohttp quotes the offending line, which a client can make 8 KB long (32 KB escaped).
            detail = detail[:MAX_DETAIL_CHARS] + "..."
        record.msg = "%s: malformed request error=%s"
        record.args = (message, detail)
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        return True


def quiet_malformed_requests() -> None:
    """Install MalformedRequestFilter on aiohttp's server logger, once per process."""
    server_logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_logger.filters):
        server_logger.addFilter(MalformedRequestFilter())
