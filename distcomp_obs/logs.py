"""Log output of every command: `text` (one human line) or `json` (one JSON object per line).

`setup_logging(level, fmt)` configures the root logger once per process; calling it again replaces
the handler (the CLI calls it before settings are known, then again with the final level and format).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

#: the text format: today's one-line format
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: the accepted values of `log_format`
LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, and exc_info when present."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log format {fmt!r}: expected one of {', '.join(LOG_FORMATS)}")


def setup_logging(level: str, fmt: str) -> None:
    """Log to stderr at `level` (DEBUG, INFO, WARNING, ERROR) in `fmt` (text or json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
