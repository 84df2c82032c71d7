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

if TYPE_CHECKING:
    from launcher.supervisor import Supervisor

REDRAW_EVERY = 0.5


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
        self.live = Live(console=self.console, auto_refresh=False, transient=False)
        self.handler = _ConsoleHandler(self.console)
        self._last = 0.0

    def update(self, sup: Supervisor) -> None:
        now = time.monotonic()
        if now - self._last < REDRAW_EVERY:
            return
        self._last = now
        self.live.update(self.render(sup), refresh=True)

    def render(self, sup: Supervisor) -> Any:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("WORKER", "PID", "GEN", "STATE", "RESTARTS", "RSS", "CPU%", "LAST EXIT"):
            table.add_column(column)
        for slot in sorted(sup.slots.values(), key=lambda s: (s.pool, s.index)):
            table.add_row(
                slot.name, str(slot.pid or "-"), str(slot.generation),
                Text(slot.state, style=_STYLE.get(slot.state, "")), str(slot.restarts),
                format_size(slot.rss) if slot.rss else "-", f"{slot.cpu:.1f}",
                slot.last_exit,
            )
        state = "stopping" if sup.stopping_since else "running"
        head = Text.from_markup(
            f"[bold]swarm {sup.spec.name}[/] {state} on {sup.host}: {len(sup.running)} "
            "processes  "
            "[dim](Ctrl-C to stop gracefully, twice to stop now)[/]"
        )
        return Group(head, table)
