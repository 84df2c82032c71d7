"""A Redis pipeline whose replies are read by name, not by position."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Batch:
    def __init__(self, redis: Any) -> None:
        self.pipe = redis.pipeline(transaction=False)
        self._names: list[str | None] = []

    def add(self, queue: Callable[[Any], Any], name: str | None = None) -> None:
        """Queue the commands ``queue`` adds to the pipeline; with a ``name``, it must add
        exactly one, whose reply ``execute`` returns under that name."""
        before = len(self.pipe.command_stack)
        queue(self.pipe)
        added = len(self.pipe.command_stack) - before
        if name is not None and added != 1:
            raise ValueError(f"{name}: a named step queues one command, not {added}")
        self._names.extend([name] if name is not None else [None] * added)

    def execute(self) -> dict[str, Any]:
        replies = self.pipe.execute() if self._names else []
        return {name: reply for name, reply in zip(self._names, replies) if name is not None}
