"""How the supervisor's Redis is doing: reachable or not since when (leases are judged
only a full expiry after it was last away), and the embedded server's restarts, with
backoff, given up after too many failed starts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from launcher import proctree
from launcher.events import EventLog
from launcher.redis_server import EmbeddedRedis, Restarts

log = logging.getLogger("swarm.supervisor")


class RedisHealth:
    def __init__(self, embedded: EmbeddedRedis | None, events: EventLog,
                 give_up: Callable[[str], None]) -> None:
        self.embedded = embedded
        self.events = events
        self.give_up = give_up  # called when the embedded Redis will not start again
        self.ok = True
        self.ok_since = time.monotonic()  # when Redis was last found reachable (or empty)
        self.restarts = Restarts()

    def unreachable(self, exc: Exception, stopping: bool) -> None:
        if self.ok:
            self.ok = False
            log.warning("Redis unreachable: %s (hang checks paused)", exc)
        if self.embedded and not self.embedded.alive() and not stopping:
            self.restart()

    def answered(self, now: float) -> None:
        if not self.ok:
            self.ok, self.ok_since = True, now
            self.events.record("redis_back")

    def forgot(self, now: float) -> None:
        """Redis restarted empty (an external server without persistence): what the
        swarm had queued there is gone; every worker gets a full expiry to beat again."""
        self.events.record("redis_lost_data", level=logging.ERROR,
                           reason="Redis came back without this swarm's records (no "
                                  "persistence?): queued tasks and cost history are lost")
        self.ok_since = now

    def died(self, status: int, stopping: bool) -> None:
        """The embedded redis-server exited (it was reaped)."""
        assert self.embedded is not None and self.embedded.process is not None
        self.embedded.process.returncode = status
        if stopping:
            return
        self.events.record("redis_exit", reason=proctree.describe_status(status),
                           level=logging.ERROR)
        self.restart()

    def restart(self) -> None:
        assert self.embedded is not None
        if not self.restarts.due(time.monotonic()):
            return
        try:
            self.embedded.start()
        except Exception as exc:  # noqa: BLE001 - RedisStartError, or the OS refusing
            if self.restarts.failed(time.monotonic()):
                self.events.record("redis_fatal", reason=str(exc), level=logging.ERROR)
                self.give_up("the embedded Redis will not start")
            else:
                log.error("embedded Redis did not come back: %s", exc)
            return
        self.restarts.succeeded()
        self.ok_since = time.monotonic()
        self.events.record("redis_restart", pid=self.embedded.pid)
