"""A worker's process tree: signal all of it, measure all of it, describe how it died."""

from __future__ import annotations

import os
import signal

import psutil

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphans of our workers (a tool's subprocess whose worker died) are reparented to
    us instead of init, so they are ours to reap and never outlive the swarm."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def signal_tree(pid: int, sig: int) -> None:
    """``sig`` to the worker's process group and to any descendant that left it."""
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    for target in (lambda: os.killpg(pid, sig), lambda: os.kill(pid, sig)):
        try:
            target()
        except (ProcessLookupError, PermissionError):
            pass
    for child in descendants:
        try:
            child.send_signal(sig)
        except psutil.Error:
            pass


def kill_group(pgid: int) -> None:
    """SIGKILL whatever is left in a dead worker's process group."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Meter:
    """RSS of a worker and its descendants, and its CPU%, sampled cheaply."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._proc = psutil.Process(pid)
        self._proc.cpu_percent(None)

    def sample(self) -> tuple[int, float]:
        rss = self._proc.memory_info().rss
        cpu = self._proc.cpu_percent(None)
        for child in _children(self.pid):
            try:
                rss += psutil.Process(child).memory_info().rss
            except psutil.Error:
                pass
        return rss, cpu


def _children(pid: int) -> list[int]:
    """Descendants via /proc/PID/task/*/children: no scan of every process."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as handle:
                    kids = [int(k) for k in handle.read().split()]
            except OSError:
                continue
            found.extend(kids)
            stack.extend(kids)
    return found


def describe_status(status: int) -> str:
    """'exit code 3', 'killed by SIGKILL', ... from a waitpid status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}"
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    return f"status {status}"
