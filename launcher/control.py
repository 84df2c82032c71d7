"""Commands for a host's supervisor, as they travel through its control list
(``swarm:{name}:host:{host}:control``): JSON written by the Python API and read by the
supervisor with each tick. This module is their only spelling."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Scale:
    """Run ``workers`` workers of ``pool`` on this host."""

    pool: str
    workers: int


@dataclass(frozen=True)
class Down:
    """Stop: workers finish their tasks first, unless ``now``."""

    now: bool = False


Command = Scale | Down


def encode(command: Command) -> str:
    if isinstance(command, Scale):
        return json.dumps({"cmd": "scale", "pool": command.pool, "workers": command.workers})
    return json.dumps({"cmd": "down", "now": command.now})


def decode(raw: str) -> Command | None:
    """The command, or None for anything malformed (a supervisor ignores it)."""
    try:
        data = json.loads(raw)
        kind = data["cmd"]
    except (ValueError, KeyError, TypeError):
        return None
    if kind == "down":
        return Down(bool(data.get("now")))
    workers = data.get("workers")
    if kind == "scale" and isinstance(data.get("pool"), str) and isinstance(workers, int) \
            and not isinstance(workers, bool) and workers >= 0:
        return Scale(data["pool"], workers)
    return None
