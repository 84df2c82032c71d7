"""The live view of a foreground `swarm up`: the slot table, redrawn from the
supervisor's own memory (no Redis reads), with log lines scrolling above it."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from launcher.status import _STYLE
from launcher.units import format_size
from workers import keys, ledger_format

if TYPE_CHECKING:
    from launcher.supervisor import Supervisor

REDRAW_EVERY = 0.5
READ_EVERY = 2.0


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(Text(self.format(record)))


class LiveView:
    def __init__(self) -> None:
        self.console = Console()
        # No refresh thread: the supervisor forks, and we redraw from its loop.
        self.live = Live(console=self.console, auto_refresh=False, transient=False,
                         redirect_stdout=False, redirect_stderr=False)
        self.handler = _ConsoleHandler(self.console)
        self._last = 0.0
        self._read = 0.0
        self._work: dict[str, Any] = {"counts": {}, "spent": 0, "states": {}}

    def update(self, sup: Supervisor) -> None:
        now = time.monotonic()
        if now - self._last < REDRAW_EVERY:
            return
        self._last = now
        self.live.update(self.render(sup), refresh=True)

    def work(self, sup: Supervisor) -> dict[str, Any]:
        """What the workers do (their own reports), the task counts and the spend, read
        from Redis every ``READ_EVERY`` seconds (one round trip)."""
        now = time.monotonic()
        if now - self._read < READ_EVERY:
            return self._work
        self._read = now
        slots = list(sup.slots.values())
        try:
            pipe = sup.redis.pipeline(transaction=False)
            pipe.hgetall(keys.counts(sup.spec.name))
            pipe.hget(keys.ledger(sup.spec.name), ledger_format.field("total", "*", "nano"))
            for slot in slots:
                pipe.hmget(keys.worker(sup.spec.name, slot.worker_id), "state", "in_flight")
            counts, spent, *rows = pipe.execute()
        except Exception:  # noqa: BLE001 - Redis away: the last view stays (the log says why)
            return self._work
        self._work = {"counts": counts, "spent": int(spent or 0),
                      "states": {s.worker_id: row for s, row in zip(slots, rows)}}
        return self._work

    def render(self, sup: Supervisor) -> Any:
        work = self.work(sup)
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("WORKER", "PID", "GEN", "STATE", "WORK", "RESTARTS", "RSS", "CPU%",
                       "LAST EXIT"):
            table.add_column(column)
        for slot in sorted(sup.slots.values(), key=lambda s: (s.pool, s.index)):
            said, in_flight = work["states"].get(slot.worker_id) or (None, None)
            doing = "-" if slot.pid is None or not said else (
                f"{said} ({in_flight})" if said == "busy" and in_flight else said)
            table.add_row(
                slot.name, str(slot.pid or "-"), str(slot.generation),
                Text(slot.state, style=_STYLE.get(slot.state, "")), doing, str(slot.restarts),
                format_size(slot.rss) if slot.rss else "-", f"{slot.cpu:.1f}",
                slot.last_exit,
            )
        state = "stopping" if sup.stopping_since else "running"
        head = Text.from_markup(
            f"[bold]swarm {sup.spec.name}[/] {state} on {sup.host}: {len(sup.running)} "
            "processes  "
            "[dim](Ctrl-C to stop gracefully, twice to stop now)[/]"
        )
        c = {k: int(v) for k, v in work["counts"].items()}
        tasks = Text(f"tasks: {c.get('queued', 0)} queued, {c.get('running', 0)} running, "
                     f"{c.get('done', 0)} done, {c.get('failed', 0)} failed · spent "
                     f"${work['spent'] / 1e9:.6f}")
        return Group(head, tasks, table)
