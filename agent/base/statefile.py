"""A small JSON state file rewritten atomically (temporary file in the same directory, fsync, rename, fsync of
the directory), so a crash leaves the old or the new file, never half of one. For the sources that remember
a cursor and sticky findings across restarts."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

MAX_STATE_BYTES = 4 << 20


def load_json(path: Path) -> Any:
    """The saved document; FileNotFoundError when there is none, ValueError/OSError when unreadable."""
    with open(path, "rb") as f:
        data = f.read(MAX_STATE_BYTES + 1)
    if len(data) > MAX_STATE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_STATE_BYTES} bytes")
    return json.loads(data.decode("utf-8"))


def save_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename is done either way
        pass
