"""Finding a swarm from another shell: the state directory here (or in a parent), a
``--swarm NAME``, or ``SWARM_REDIS_URL`` for a swarm whose Redis is shared. A swarm
that is not running is ``NotRunning`` here; launcher/history.py reads what it left."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from launcher.state import NotFound, StateDir, find
from workers import keys
from workers.redis_target import RedisTarget


class NotRunning(Exception):
    """The swarm exists but does not answer; ``str()`` is a one-line answer. ``state``:
    its state directory, when it has one (what it left there can still be read)."""

    def __init__(self, message: str, state: StateDir | None = None) -> None:
        super().__init__(message)
        self.state = state


@dataclass
class Found:
    name: str
    target: RedisTarget
    state: StateDir | None
    # not running: ``target`` holds what it left (launcher/history.py), only to be read
    stopped: bool = False
    # set when ``target`` is a private server on a copy of its data: ends that server
    close: Callable[[], None] | None = field(default=None, repr=False)

    def client(self) -> redis.Redis:
        return self.target.sync(socket_timeout=5.0, socket_connect_timeout=2.0)


def locate(name: str | None) -> Found:
    env_url = os.environ.get("SWARM_REDIS_URL")
    try:
        state: StateDir | None = find(name)
    except NotFound:
        if not env_url:
            raise
        state = None
    if state is not None:
        target = state.read_redis()
        if target is not None:
            return Found(state.name, target, state)
        if not env_url:
            raise NotRunning(f"swarm '{state.name}' is not running", state)
    assert env_url is not None
    try:
        target = RedisTarget.parse(env_url)
    except ValueError as exc:
        raise NotFound(f"SWARM_REDIS_URL: {exc}") from None
    return Found(name or _only_swarm(target), target, state)


def _only_swarm(target: RedisTarget) -> str:
    try:
        names = sorted(target.sync(socket_timeout=5.0).smembers(keys.REGISTRY))
    except redis.RedisError as exc:
        raise NotRunning(f"cannot reach Redis at {target}: {exc}") from None
    if len(names) == 1:
        return str(names[0])
    if not names:
        raise NotRunning(f"no swarm has registered in the Redis at {target}")
    raise NotFound(f"several swarms in the Redis at {target} ({', '.join(str(n) for n in names)}): "
                   "choose one with --swarm NAME")
