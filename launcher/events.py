"""Supervision events (start, exit, hang, memory kill, restart, give-up, scale, stop):
written to the supervisor's log at once and to a capped Redis stream on the next tick."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from workers import keys

if TYPE_CHECKING:
    from launcher.slot import Slot

log = logging.getLogger("swarm.supervisor")


class EventLog:
    """A swarm's events are one stream for all its hosts; each says its host."""

    def __init__(self, swarm: str, host: str) -> None:
        self.key = keys.events(swarm)
        self.host = host
        self._pending: list[dict[str, str]] = []
        self.counts: dict[str, int] = {}

    def record(self, kind: str, slot: Slot | None = None, level: int = logging.INFO,
               **detail: Any) -> None:
        fields: dict[str, str] = {"kind": kind, "ts": f"{time.time():.3f}", "host": self.host}
        if slot is not None:
            fields["worker"] = slot.worker_id
            fields["slot"] = slot.name
            fields["pool"] = slot.pool
            fields["generation"] = str(slot.generation)
        fields.update({k: str(v) for k, v in detail.items()})
        self._pending.append(fields)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        who = f" {slot.name}#{slot.generation}" if slot is not None else ""
        text = " ".join(f"{k}={v}" for k, v in detail.items())
        log.log(level, "%s%s %s", kind, who, text)

    def flush_into(self, pipe: Any) -> None:
        for fields in self._pending:
            pipe.xadd(self.key, fields, maxlen=keys.EVENTS_MAXLEN, approximate=True)
        self._pending.clear()
