"""Logs: JSON lines for machines, readable lines on a terminal; request ids; sampled access log.

Every record becomes one line. In JSON form it carries ``time``, ``level``,
``logger`` and ``message`` and the structured fields the code attaches
(``extra=``: ``event``, ``client``, ``identity``, ``request_id``, ``status``…).
Secrets never reach a log call: identities are logged, secrets and
Authorization headers are not.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from typing import Any

import orjson

from resolver.config import Config

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
access_log = logging.getLogger("idnode.access")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode("utf-8")


class TextFormatter(logging.Formatter):
    """The usual line, then the structured fields as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = _fields(record)
        if extra:
            text += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return text


def configure_logging(config: Config) -> None:
    """Log to standard error in the configured format (``auto``: text on a terminal)."""
    fmt = config.log_format
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, config.log_level))


def sampled(rate: float) -> bool:
    """Whether this request's access line is written (``rate`` from 0 to 1)."""
    return rate >= 1.0 or (rate > 0.0 and random.random() < rate)
