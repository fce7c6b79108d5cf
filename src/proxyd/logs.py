"""Logging set-up: one JSON object per line, so log pipelines need no parsing rules.

Request loggers (`proxyd.access`) pass their fields with
`extra={"fields": {...}}`; nothing secret is ever put there (I7): no
passphrases, keys, or request bodies — DNs, routes, rules and timings only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(*, debug: bool = False, json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # Library chatter that would otherwise drown the request lines.
    for noisy in ("alembic", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # aiohttp.server logs every unparsable request, raw client bytes included, at ERROR:
    # any client could flood the log with text of its choosing. Our middleware logs the
    # requests that reach proxyd (one JSON line each, no client bytes).
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
