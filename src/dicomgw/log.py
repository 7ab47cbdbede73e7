"""Structured logging: one JSON object per line, with the association/request id.

The id lives in a ContextVar so that every log line written while serving an
association or request carries it without passing it through every call.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

from dicomgw.config import LoggingConfig

context_id: ContextVar[str | None] = ContextVar("dicomgw_context_id", default=None)

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = context_id.get()
        if ctx is not None:
            entry["ctx"] = ctx
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """For a terminal: the same fields, readable."""

    def format(self, record: logging.LogRecord) -> str:
        ctx = context_id.get()
        extra = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _RECORD_ATTRS and not k.startswith("_")
        )
        line = f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        if ctx:
            line = f"{line} [{ctx}]"
        if extra:
            line = f"{line} {extra}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def setup_logging(config: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level)
    # asyncpg/alembic are chatty at INFO about things operators do not act on.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
