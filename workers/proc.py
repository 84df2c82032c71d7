"""Process plumbing: die with the parent; import only from where swarm is installed."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_libc = None


def die_with_parent(sig: int = signal.SIGKILL, parent_pid: int | None = None) -> None:
    """Have the kernel send ``sig`` when the parent exits (Linux PR_SET_PDEATHSIG).

    If the parent is already gone (it died between fork and here), exit now.
    """
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the worker's parent watch covers it
        pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def preexec_die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` for subprocess: the child gets ``sig`` when we die."""
    parent = os.getpid()

    def _preexec() -> None:
        die_with_parent(sig, parent)

    return _preexec


def isolate_imports(*folders: str) -> None:
    """Take the current folder ('' or '.', which ``python -c`` and ``-m`` put on
    sys.path) and ``folders`` (a workdir) off ``sys.path``, so this process never imports
    a module a model wrote there. The folder swarm itself is in stays (a source checkout
    run with ``python -m``)."""
    own = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    banned = {os.path.realpath(f) for f in folders} - {os.path.realpath(own)}
    sys.path[:] = [p for p in sys.path
                   if p not in ("", ".") and os.path.realpath(p) not in banned]
