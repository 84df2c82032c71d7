"""``on_start`` hooks the benchmarks give their workers (the spec's ``on_start:
hooks:NAME``, with bench/ on PYTHONPATH). They run inside the worker once it has booted.
"""

from __future__ import annotations

import gc
import signal
import time


def block_on_usr1(worker: object) -> None:
    """After SIGUSR1 the worker's event loop is blocked for good (a Python signal handler
    that never returns): the process keeps running but stops heartbeating, a real hang,
    unlike SIGSTOP, which also tells the parent (SIGCHLD with CLD_STOPPED)."""

    def _block(signum: int, frame: object) -> None:
        while True:
            time.sleep(3600)

    signal.signal(signal.SIGUSR1, _block)


def full_gc(worker: object) -> None:
    """One full garbage collection, as a long-running worker eventually does on its own:
    it walks (writes to) every tracked object it inherited, copying their pages."""
    gc.collect()
