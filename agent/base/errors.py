"""One way to put an exception into a finding's message, a log line or a metric label: its type and its
message on one line (a tool's multi-line stderr or a library's traceback text must not break a table row)."""
from __future__ import annotations

MAX_CHARS = 500  # a message, not a dump: the tool's own output is bounded separately


def one_line(e: BaseException) -> str:
    """The exception's message with whitespace folded; its type name when it has no message."""
    return " ".join(str(e).split())[:MAX_CHARS] or type(e).__name__


def error_text(e: BaseException) -> str:
    """`Type: message` (or `Type` alone): what findings and logs say about a failure."""
    msg = " ".join(str(e).split())[:MAX_CHARS]
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
