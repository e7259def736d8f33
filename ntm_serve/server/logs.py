"""Structured logs: one JSON object per line (time, level, logger, message and any `extra=` fields), or with
`--log-format text` one readable line carrying the same fields as key=value pairs (logfmt)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's structured fields: what the call passed as `extra=`."""
    return {key: value for key, value in vars(record).items() if key not in _STANDARD and not key.startswith("_")}


def logfmt_value(value: Any) -> str:
    """A value as logfmt writes it: bare when it is one plain word, else a JSON string or JSON (lists, dicts)."""
    if isinstance(value, str):
        plain = value and not any(c.isspace() or c in '"=\\' for c in value) and value.isprintable()
        return value if plain else json.dumps(value)
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    return json.dumps(value, default=str)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`: for people, with every field the JSON line has."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)  # may end with the traceback: the fields go on the first line
        head, sep, rest = line.partition("\n")
        pairs = " ".join(f"{key}={logfmt_value(value)}" for key, value in fields(record).items())
        return f"{head} {pairs}{sep}{rest}" if pairs else line


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Configure the root logger for the server process (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
