"""The worker processes a supervisor forked: starting one, sending what it prints to
its slot's log file, sampling its tree's memory and CPU, and killing its tree (politely
first, then SIGKILL once the grace is over)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import signal
import time
from dataclasses import dataclass

import psutil

from launcher import proctree
from launcher.events import EventLog
from launcher.judge import Kill
from launcher.logfiles import SlotLog
from launcher.slot import HUNG, Slot
from launcher.spawn import fork_worker
from launcher.spec import Logs
from workers.config import WorkerConfig


@dataclass
class Running:
    """What the supervisor holds for a live worker process."""

    slot: Slot
    fd: int
    log: SlotLog
    meter: proctree.Meter | None = None


class Children:
    """pid -> the live worker processes, their output read through ``selector``."""

    def __init__(self, selector: selectors.BaseSelector, logs: Logs, events: EventLog,
                 keep_closed: list[int]) -> None:
        self.selector = selector
        self.logs = logs
        self.events = events
        self.keep_closed = keep_closed  # the supervisor's own descriptors, not for forks
        self.running: dict[int, Running] = {}

    def start(self, slot: Slot, cfg: WorkerConfig, now: float) -> int:
        """Fork the slot's worker; its pid. ``OSError`` if the fork failed."""
        close = self.keep_closed + [p.fd for p in self.running.values()]
        pid, fd = fork_worker(cfg, close)
        slot.started(pid, now)
        proc = Running(slot, fd, SlotLog(self.logs.dir / f"{slot.name}.log", self.logs))
        with contextlib.suppress(psutil.Error):  # gone already: its exit is reaped next
            proc.meter = proctree.Meter(pid)
        self.running[pid] = proc
        self.selector.register(fd, selectors.EVENT_READ, proc)
        return pid

    def exited(self, pid: int) -> Running:
        """Forget a reaped process, after taking the last of its output."""
        proc = self.running.pop(pid)
        self.read_output(proc, drain=True)
        self._close_output(proc)
        return proc

    def read_output(self, proc: Running, drain: bool = False) -> None:
        while proc.fd >= 0:
            try:
                data = os.read(proc.fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return
                raise
            if not data:
                if not drain:
                    self._close_output(proc)
                return
            proc.log.feed(data)
            if not drain and len(data) < 65536:
                return

    def _close_output(self, proc: Running) -> None:
        if proc.fd < 0:
            return
        with contextlib.suppress(KeyError, ValueError):  # never registered, or already out
            self.selector.unregister(proc.fd)
        os.close(proc.fd)
        proc.fd = -1
        proc.log.close()

    def sample(self) -> None:
        """Each live worker tree's RSS and CPU%, onto its slot."""
        for proc in self.running.values():
            if proc.meter is None:
                continue
            with contextlib.suppress(psutil.Error):  # it just exited
                proc.slot.rss, proc.slot.cpu = proc.meter.sample()

    def kill(self, kill: Kill, grace: float) -> None:
        """First the polite signal (SIGABRT makes a hung worker dump its stack into its
        log; SIGCONT wakes a stopped one so it can), then SIGKILL after ``grace``."""
        slot = kill.slot
        assert slot.pid is not None
        self.events.record("hang" if kill.state == HUNG else "memory_kill", slot,
                           pid=slot.pid, reason=kill.reason, level=logging.WARNING)
        slot.state, slot.last_exit = kill.state, kill.reason
        slot.kill_at = time.monotonic() + grace
        proctree.signal_tree(slot.pid, kill.polite)
        proctree.signal_tree(slot.pid, signal.SIGCONT)

    def escalate(self, now: float) -> None:
        """SIGKILL the trees whose grace ran out (and again every 5 s, for one stuck in
        the kernel)."""
        for proc in self.running.values():
            slot = proc.slot
            if slot.kill_at is not None and now >= slot.kill_at:
                self.events.record("sigkill", slot, pid=slot.pid, level=logging.WARNING)
                proctree.signal_tree(proc.slot.pid or 0, signal.SIGKILL)
                slot.kill_at = now + 5.0

    def kill_all(self, reason: str) -> None:
        for proc in self.running.values():
            self.events.record("sigkill", proc.slot, pid=proc.slot.pid, reason=reason,
                               level=logging.WARNING)
        self.signal_all(signal.SIGKILL)

    def signal_all(self, sig: int) -> None:
        for pid in list(self.running):
            proctree.signal_tree(pid, sig)
