"""`swarm logs`: the last lines of a log file, and following it across rotations."""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from pathlib import Path


def show(path: Path, lines: int, follow: bool) -> None:
    with open(path, "rb") as handle:
        for line in deque(handle, maxlen=max(lines, 0)):
            sys.stdout.buffer.write(line)
        sys.stdout.flush()
        if not follow:
            return
        inode = os.fstat(handle.fileno()).st_ino
        while True:
            chunk = handle.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            time.sleep(0.2)
            try:
                rotated = os.stat(path).st_ino != inode
            except FileNotFoundError:
                continue
            if rotated:  # the file was rotated: finish the old one, open the new one
                rest = handle.read()
                if rest:
                    sys.stdout.buffer.write(rest)
                handle.close()
                handle = open(path, "rb")
                inode = os.fstat(handle.fileno()).st_ino
