"""Signals for a select loop: handlers only queue the signal (no logging, no locks),
and ``signal.set_wakeup_fd`` wakes the loop's select through a pipe."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal

HANDLED = (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class SignalQueue:
    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        self.read_fd, self.write_fd = os.pipe()
        self.queued: list[int] = []

    def install(self) -> None:
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        self.selector.register(self.read_fd, selectors.EVENT_READ)
        for sig in HANDLED:
            signal.signal(sig, self._queue)

    def _queue(self, sig: int, _frame: object) -> None:
        self.queued.append(sig)  # NO logging, just queue the signal

    def drain(self) -> None:
        """Empty the wake-up pipe (its bytes only woke the select)."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.read_fd, 4096):
                pass

    def take(self) -> list[int]:
        taken, self.queued = self.queued, []
        return taken
