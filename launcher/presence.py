"""A host's place in its swarm, in Redis: it takes its host name's lease, registers
(again, after Redis forgot it), publishes its slots, pools and lease each tick or two,
and leaves. What every key means is in workers/keys.py and docs/protocol.md."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from launcher import host_scripts
from launcher.slot import Slot
from launcher.spec import SwarmSpec
from launcher.state import pid_alive, process_started
from workers import keys
from workers.pricing import source as price_source_of
from launcher.spec_roles import subscription_pools


class HostTaken(Exception):
    """Another live supervisor runs this swarm under the same host name."""


@dataclass
class Presence:
    redis: Any
    spec: SwarmSpec
    host: str
    pid: int
    reference_model: str | None
    embedded: bool

    def __post_init__(self) -> None:
        self.started = time.time()
        self.boot = f"{host_identity()}:{process_started(self.pid)}"

    def claim(self) -> None:
        """Take this host's lease, or ``HostTaken`` if a live supervisor holds it (the
        same host name on another machine, or a second `swarm up`). One that died on
        this very machine (same boot and pid namespace, its pid gone or reused) is
        replaced at once."""
        name, now = self.spec.name, time.time()
        script = self.redis.register_script(host_scripts.CLAIM_HOST)
        k, a = host_scripts.claim_host_args(name, self.host, self.pid, self.boot, now)
        held = script(keys=k, args=a)
        if held == "ok":
            return
        pid, boot = str(held[0]), str(held[1])
        where, _, started = boot.rpartition(":")
        alive = pid.isdigit() and pid_alive(int(pid)) and process_started(int(pid)) == started
        if where == host_identity() and not alive:
            k, a = host_scripts.claim_host_args(name, self.host, self.pid, self.boot, now,
                                                f"{pid} {boot}")
            if script(keys=k, args=a) == "ok":
                return
        raise HostTaken(
            f"swarm '{name}' already runs on a host named '{self.host}' (supervisor pid "
            f"{pid}); each host needs its own name (host: in the spec, or SWARM_HOST). "
            f"If that host is gone, its lease ends within {keys.HOST_LEASE_MS // 1000} s")

    def register(self) -> None:
        """Make this host part of the swarm: the registry, the swarm's shared meta and
        pools, its own lease, fresh slots and pools; budget pauses are judged again."""
        name, host = self.spec.name, self.host
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(keys.REGISTRY, name)
        pipe.sadd(keys.hosts(name), host)
        pipe.hset(keys.host(name, host), mapping=self._record(stopping=False))
        pipe.pexpire(keys.host(name, host), keys.HOST_LEASE_MS)
        pipe.delete(keys.host_slots(name, host), keys.host_pools(name, host))
        pipe.hset(keys.pools(name),
                  mapping={p: pool.workers for p, pool in self.spec.pools.items()})
        for pool in [None, *self.spec.pools]:
            k, a = host_scripts.clear_budget_pause_args(name, pool)
            pipe.eval(host_scripts.CLEAR_BUDGET_PAUSE, len(k), *k, *a)
        pipe.hset(keys.budgets(name), mapping={
            "swarm": "" if self.spec.budget_usd is None else str(self.spec.budget_usd),
            **{f"pool:{p}": "" if pool.budget_usd is None else str(pool.budget_usd)
               for p, pool in self.spec.pools.items()}})
        pipe.hset(keys.meta(name), mapping={
            "state": "running",
            "default_pool": str(self.spec.default_pool),
            "budget_usd": "" if self.spec.budget_usd is None else str(self.spec.budget_usd),
            "workdirs": json.dumps({n: str(pool.workdir) for n, pool in self.spec.pools.items()}),
            "leads": ",".join(n for n, pool in self.spec.pools.items() if pool.role == "lead"),
            "librarians": ",".join(n for n, pool in self.spec.pools.items()
                                   if pool.role == "librarian"),
            "reference_model": self.reference_model or "",
            "price_source": price_source(sorted(self.spec.prices)),
            "redis": "embedded" if self.embedded else "external",
            "subscription": ",".join(subscription_pools(self.spec)),
        })
        pipe.execute()

    def publish(self, pipe: Any, slots: Mapping[str, Slot], targets: Mapping[str, int],
                stopping: bool) -> None:
        """Queue this host's part of the swarm: its lease (renewed), slots and pools."""
        name, host = self.spec.name, self.host
        table = {wid: json.dumps(self.slot_view(slot)) for wid, slot in slots.items()}
        if table:
            pipe.hset(keys.host_slots(name, host), mapping=table)
        pipe.hset(keys.host(name, host), mapping=self._record(stopping))
        pipe.pexpire(keys.host(name, host), keys.HOST_LEASE_MS)
        pipe.hset(keys.host_pools(name, host), mapping=dict(targets))

    def leave(self, pipe: Any) -> None:
        """Queue this host's leaving: the last host to leave marks the swarm stopped."""
        k, a = host_scripts.leave_args(self.spec.name, self.host, time.time())
        pipe.eval(host_scripts.LEAVE, len(k), *k, *a)

    def slot_view(self, slot: Slot) -> dict[str, Any]:
        return {
            "pool": slot.pool,
            "slot": slot.name,
            "pid": slot.pid,
            "generation": slot.generation,
            "state": str(slot.state),
            "restarts": slot.restarts,
            "rss": slot.rss,
            "cpu": round(slot.cpu, 1),
            "last_exit": slot.last_exit,
            "expiry": self.spec.pools[slot.pool].heartbeat.expiry,
        }

    def _record(self, stopping: bool) -> dict[str, str | int | float]:
        return {
            "state": "stopping" if stopping else "running",
            "pid": self.pid,
            "boot": self.boot,
            "machine": socket.gethostname(),
            "started": self.started,
            "tick": time.time(),
            "spec": str(self.spec.source or ""),
        }


def host_identity() -> str:
    """This machine's boot and pid namespace: where a pid means the same process."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
    except OSError:
        boot = socket.gethostname()
    try:
        space = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        space = "?"
    return f"{boot}:{space}"


def price_source(overridden: list[str]) -> str:
    text = price_source_of()
    return text + (f"; spec overrides: {', '.join(overridden)}" if overridden else "")
