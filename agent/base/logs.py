"""Log output of both commands (`agent`, `vigil-aggregator`): readable text by default, or `--log-format json`:
one JSON object per line, for a log pipeline (Loki, Elasticsearch, Cloud Logging) to index without a parser.

    {"time": "2026-12-02T04:50:01.123Z", "level": "info", "logger": "vigil.aggregator.engine",
     "message": "node gpu-node-3: decided unhealthy, check gpu.ecc.uncorrectable: ...",
     "node": "gpu-node-3", "check": "gpu.ecc.uncorrectable"}

`node`, `check` and `entity` appear where there is one: passed by the log call (`log.info(..., extra={"node":
name, "check": check})`) or set for the whole process with `context(node=...)` (the agent: its own node). The
message stays the whole sentence, so the text and JSON forms say the same. A traceback goes in `exception`.
"""
from __future__ import annotations

import json
import logging
import sys
import time

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
FIELDS = ("node", "check", "entity")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_context: dict[str, str] = {}


def context(**fields: str | None) -> None:
    """Fields every later JSON line carries unless its call passes its own (None removes one)."""
    for k, v in fields.items():
        if k not in FIELDS:
            raise ValueError(f"unknown log field {k!r} (one of {', '.join(FIELDS)})")
        if v is None:
            _context.pop(k, None)
        else:
            _context[k] = str(v)


class JsonFormatter(logging.Formatter):
    """One line of strict JSON per record (ASCII only: a stray byte in a message cannot break a line)."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a log call with bad arguments still yields one valid line
            message = f"{record.msg!r} % {record.args!r}"
        seconds = int(record.created)
        out: dict[str, str] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for k in FIELDS:
            v = getattr(record, k, None)
            if v is None:
                v = _context.get(k)
            if v is not None:
                out[k] = str(v)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=True, allow_nan=False)


def setup(level: str, fmt: str = "text") -> None:
    """The root logger for a command: LEVEL (one of LEVELS) in FORMAT (one of FORMATS), to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def add_flags(p) -> None:  # noqa: ANN001 - an argparse parser or argument group
    p.add_argument("--log-level", default="info", choices=list(LEVELS))
    p.add_argument("--log-format", default="text", choices=list(FORMATS),
                   help="text (default) or json: one object per line (time, level, logger, message, and node, "
                        "check, entity where there is one)")
