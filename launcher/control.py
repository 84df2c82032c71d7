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


@dataclass(frozen=True)
class Restart:
    """Restart the workers of ``target`` (a pool, a slot like ``haiku-1``; None: all):
    each finishes its tasks first (within stop_grace), then starts again at once."""

    target: str | None = None


@dataclass(frozen=True)
class Reload:
    """Read the spec file again and apply it: worker counts, budgets, and the pools
    whose settings changed restarted."""


Command = Scale | Down | Restart | Reload


def encode(command: Command) -> str:
    if isinstance(command, Scale):
        return json.dumps({"cmd": "scale", "pool": command.pool, "workers": command.workers})
    if isinstance(command, Restart):
        return json.dumps({"cmd": "restart", "target": command.target})
    if isinstance(command, Reload):
        return json.dumps({"cmd": "reload"})
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
    if kind == "reload":
        return Reload()
    if kind == "restart":
        target = data.get("target")
        return Restart(target) if target is None or isinstance(target, str) else None
    workers = data.get("workers")
    if kind == "scale" and isinstance(data.get("pool"), str) and isinstance(workers, int) \
            and not isinstance(workers, bool) and workers >= 0:
        return Scale(data["pool"], workers)
    return None
