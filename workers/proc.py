"""Process plumbing a child needs right after fork: die with the parent, own group."""

from __future__ import annotations

import ctypes
import os
import signal

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


def preexec_die_with_parent(sig: int = signal.SIGTERM):  # type: ignore[no-untyped-def]
    """A ``preexec_fn`` for subprocess: the child gets ``sig`` when we die."""
    parent = os.getpid()

    def _preexec() -> None:
        die_with_parent(sig, parent)

    return _preexec
