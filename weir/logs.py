"""Logging set-up, done once per process; leaves an already configured root logger alone."""

from __future__ import annotations

import logging
import sys


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
