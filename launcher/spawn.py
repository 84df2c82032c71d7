"""Forking a worker. The supervisor has already imported the heavy modules (the SDK,
httpx, pydantic), so a fork starts a worker in milliseconds and shares those pages."""

from __future__ import annotations

import os
import signal
import sys
import traceback

from workers.config import WorkerConfig
from workers.proc import die_with_parent

_RESET = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT,
          signal.SIGUSR1, signal.SIGUSR2)


def fork_worker(cfg: WorkerConfig, close_in_child: list[int]) -> tuple[int, int]:
    """Start a worker; returns (pid, fd to read its stdout and stderr from)."""
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child never returns from here
        code = 1
        try:
            os.setsid()  # its own process group: the whole tree can be signalled at once
            die_with_parent(signal.SIGKILL, parent)
            signal.set_wakeup_fd(-1)
            for sig in _RESET:
                signal.signal(sig, signal.SIG_DFL)
            # a write to a peer that went away is an error to handle, never a death
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
            for fd in (read_fd, *close_in_child):
                _close(fd)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(write_fd, 1)
            os.dup2(write_fd, 2)
            _close(null)
            _close(write_fd)
            from workers.worker import run

            code = run(cfg)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - report anything, then leave
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    return pid, read_fd


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
