"""Log files: one per worker slot and one for the supervisor, each rotated by size.

Workers write to their stdout/stderr, which is a pipe the supervisor reads; the
supervisor writes what arrives, line by line, into the slot's file. So a worker's
crash traceback, a faulthandler stack dump and a C library's complaint all land in
the slot's log, and rotation is done by one process only.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from launcher.spec import Logs

# (each line names its swarm: several swarms may log into one folder)
SUPERVISOR_FORMAT = "%(asctime)s %(levelname)s {swarm} supervisor %(message)s"


def rotating(path: Path, cfg: Logs, fmt: str = "%(message)s") -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=cfg.max_bytes, backupCount=cfg.backups, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter(fmt))
    return handler


class SlotLog:
    """Receives raw bytes from one slot's pipe and writes whole lines to its file."""

    def __init__(self, path: Path, cfg: Logs) -> None:
        self.path = path
        self.handler = rotating(path, cfg)
        self._partial = b""

    def feed(self, data: bytes) -> None:
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            self.write(line.decode("utf-8", "replace"))

    def flush_partial(self) -> None:
        if self._partial:
            self.write(self._partial.decode("utf-8", "replace"))
            self._partial = b""

    def write(self, line: str) -> None:
        self.handler.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))

    def close(self) -> None:
        self.flush_partial()
        self.handler.close()
