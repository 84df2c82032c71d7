"""The Python API: submit tasks to a running swarm and wait for their findings.

    from launcher.client import Swarm
    swarm = Swarm.find()                      # as `swarm status` finds it
    task_id = swarm.submit("Count the TODOs in src/", pool="haiku")
    finding = swarm.wait(task_id, timeout=300)
    print(finding["result"], finding["cost"])

``submit`` and ``wait`` are also module functions that find the swarm each time.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Iterable

from launcher import control
from launcher.client_errors import SubmitError, SwarmError, check_text
from launcher.client_more import Control, RunsAndFindings
from workers import keys, scripts
from workers.payload import Task, dump



@dataclass
class Swarm(Control, RunsAndFindings):
    name: str
    redis: Any

    @classmethod
    def find(cls, name: str | None = None) -> Swarm:
        from launcher.connect import locate

        found = locate(name)
        return cls(found.name, found.client())

    def submit(self, description: str, pool: str | None = None,
               files: Iterable[str] = (), task_id: str | None = None) -> str:
        """Queue a task; returns its id. The payload is also written to ``task:{id}``
        and announced on ``channel:tasks``, as the seed protocol does."""
        if task_id is not None and self.redis.exists(keys.task(task_id)):
            raise SubmitError(f"task id {task_id!r} is already taken")
        return self.submit_many([description], pool, files, [task_id] if task_id else None)[0]

    def submit_many(self, descriptions: list[str], pool: str | None = None,
                    files: Iterable[str] = (), task_ids: list[str] | None = None) -> list[str]:
        """Queue many tasks in one round trip per thousand; returns their ids."""
        if any(not d.strip() for d in descriptions):
            raise SubmitError("a task's description is empty")
        for text in (*descriptions, *files):
            check_text(text)
        if task_ids is not None and len(task_ids) != len(descriptions):
            raise SubmitError("task_ids and descriptions differ in length")
        pool, meta = self._pool(pool)
        files = list(files)
        _check_files(files, pool, meta)
        ids = task_ids or [f"task_{uuid.uuid4().hex[:16]}" for _ in descriptions]
        script = self.redis.register_script(scripts.ENQUEUE)
        for start in range(0, len(ids), 1000):
            pipe = self.redis.pipeline(transaction=False)
            for task_id, text in zip(ids[start:start + 1000], descriptions[start:start + 1000]):
                pipe.set(keys.task(task_id), dump(Task(text, files, pool, {"swarm": self.name})))
                k, a = scripts.enqueue_args(self.name, pool, task_id, "submit", time.time())
                script(keys=k, args=a, client=pipe)
                pipe.publish(keys.CHANNEL_TASKS, task_id)
            pipe.execute()
        return ids

    def paused(self, pool: str | None = None) -> str | None:
        """Why the swarm (or ``pool``) takes no new work now, or None."""
        swarm_wide, pool_only = self.redis.mget(
            keys.paused(self.name), keys.paused(self.name, pool or "-"))
        return swarm_wide or (pool_only if pool else None)

    def _pool(self, pool: str | None) -> tuple[str, dict[str, str]]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.meta(self.name))
        pipe.hkeys(keys.pools(self.name))
        meta, pools = pipe.execute()
        if not meta or meta.get("state") == "stopped":
            raise SubmitError(f"swarm '{self.name}' is not running")
        pool = pool or meta.get("default_pool") or (pools[0] if pools else "")
        if pool not in pools:
            raise SubmitError(f"swarm '{self.name}' has no pool {pool!r} "
                              f"(pools: {', '.join(sorted(pools))})")
        for role, how in (("leads", "give it a goal with `swarm run`"),
                          ("librarians", "ask it with query:archive:{uuid}")):
            if pool in (meta.get(role) or "").split(","):
                raise SubmitError(f"pool {pool!r} is a {role[:-1]} pool: {how}")
        return pool, meta

    def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the task has a finding; returns it. TimeoutError after ``timeout``."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.CHANNEL_COMPLETIONS)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                finding = self.finding_of(task_id)
                if finding is not None:
                    return finding
                left = 1.0 if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no finding for {task_id} after {timeout:g}s")
                pubsub.get_message(timeout=min(left, 1.0))  # any completion: look again
        finally:
            pubsub.close()

    def finding_of(self, task_id: str) -> dict[str, Any] | None:
        finding_id = self.redis.get(keys.task_result(task_id))
        if finding_id is None:
            return None
        raw = self.redis.get(keys.finding(finding_id))
        return json.loads(raw) if raw else {"finding_id": finding_id}

    def task(self, task_id: str) -> dict[str, Any] | None:
        """Swarm's record of a task, with its payload and finding."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.task_meta(self.name, task_id))
        pipe.get(keys.task(task_id))
        pipe.get(keys.task_result(task_id))
        pipe.get(keys.task_claimed(task_id))
        meta, body, finding_id, claimed = pipe.execute()
        if not meta and body is None:
            return None
        record: dict[str, Any] = {"id": task_id, **meta, "payload": body, "claimed": claimed}
        record["finding"] = self.finding_of(task_id) if finding_id else None
        return record

    # --- hosts: scale and stop ------------------------------------------------------

    def hosts(self) -> dict[str, bool]:
        """Every host of the swarm -> whether its supervisor holds its lease (lives)."""
        names = sorted(self.redis.smembers(keys.hosts(self.name)))
        pipe = self.redis.pipeline(transaction=False)
        for host in names:
            pipe.exists(keys.host(self.name, host))
        return {host: bool(alive) for host, alive in zip(names, pipe.execute())}

    def pick_host(self, host: str | None, here: str | None = None) -> str:
        """The live host a command is for: ``host``, else ``here`` (the host this shell
        runs on) if it runs the swarm, else the only live host. SwarmError otherwise."""
        alive = [h for h, up in self.hosts().items() if up]
        if host is not None:
            if host not in alive:
                raise SwarmError(f"swarm '{self.name}' has no live host {host!r} "
                                 f"(live: {', '.join(alive) or 'none'})")
            return host
        if here in alive:
            return str(here)
        if len(alive) == 1:
            return alive[0]
        if not alive:
            raise SwarmError(f"swarm '{self.name}' is not running on any host")
        raise SwarmError(f"swarm '{self.name}' runs on {len(alive)} hosts "
                         f"({', '.join(alive)}): choose one with --host")

    def send(self, command: control.Command, host: str) -> None:
        """Queue a command for ``host``'s supervisor (read with its next tick)."""
        self.redis.rpush(keys.host_control(self.name, host), control.encode(command))

    def scale(self, pool: str, workers: int, host: str, timeout: float = 10.0) -> int:
        """Ask ``host``'s supervisor for ``workers`` workers of ``pool``; returns how many
        it had. SwarmError if the pool does not exist or the host does not answer."""
        if workers < 0:
            raise SwarmError(f"cannot scale to {workers} workers")
        pools = self.redis.hgetall(keys.host_pools(self.name, host))
        if pool not in pools:
            known = ", ".join(sorted(pools)) or "none"
            raise SwarmError(f"swarm '{self.name}' has no pool {pool!r} (pools: {known})")
        self.send(control.Scale(pool, workers), host)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.redis.hget(keys.host_pools(self.name, host), pool) == str(workers):
                return int(pools[pool])
            time.sleep(0.05)
        raise SwarmError(f"the supervisor on {host} did not take the change within "
                         f"{timeout:g}s")

    def restart(self, target: str | None = None, host: str | None = None) -> list[str]:
        """Restart workers on every live host (or ``host``): all, a pool's, or one slot's
        (``haiku-1``); each finishes its tasks first. Returns the hosts asked."""
        if target is not None and target not in self.redis.hkeys(keys.pools(self.name)) \
                and target.rpartition("-")[0] not in self.redis.hkeys(keys.pools(self.name)):
            raise SwarmError(f"swarm '{self.name}' has no pool or worker {target!r}")
        return self._to_hosts(control.Restart(target), host)

    def reload(self, host: str | None = None) -> list[str]:
        """Ask every live host's supervisor (or ``host``'s) to apply its spec file as it
        is now. Returns the hosts asked."""
        return self._to_hosts(control.Reload(), host)

    def _to_hosts(self, command: control.Command, host: str | None) -> list[str]:
        alive = [h for h, up in self.hosts().items() if up]
        if host is not None and host not in alive:
            raise SwarmError(f"swarm '{self.name}' has no live host {host!r} "
                             f"(live: {', '.join(alive) or 'none'})")
        targets = [host] if host else alive
        if not targets:
            raise SwarmError(f"swarm '{self.name}' is not running on any host")
        for name in targets:
            self.send(command, name)
        return targets

    def down(self, now: bool = False, host: str | None = None,
             timeout: float = 120.0) -> tuple[list[str], list[str], list[str]]:
        """Stop the swarm on every host (or on ``host``). Returns (hosts whose supervisor
        confirmed it stopped, hosts that did not within ``timeout``, hosts already lost,
        which are forgotten)."""
        known = self.hosts()
        if host is not None and not known.get(host):
            raise SwarmError(f"swarm '{self.name}' has no live host {host!r} "
                             f"(live: {', '.join(h for h, up in known.items() if up) or 'none'})")
        targets = [host] if host else [h for h, up in known.items() if up]
        lost = [] if host else [h for h, up in known.items() if not up]
        pipe = self.redis.pipeline(transaction=False)
        for name in targets:
            pipe.rpush(keys.host_control(self.name, name), control.encode(control.Down(now)))
        for name in lost:
            pipe.srem(keys.hosts(self.name), name)
            pipe.delete(keys.host_slots(self.name, name), keys.host_pools(self.name, name))
        pipe.execute()
        deadline = time.monotonic() + timeout
        waiting = list(targets)
        while waiting and time.monotonic() < deadline:
            members = self.redis.smembers(keys.hosts(self.name))
            waiting = [name for name in waiting if name in members]
            if waiting:
                time.sleep(0.05)
        if not host and not waiting and not targets:
            self.redis.hset(keys.meta(self.name), "state", "stopped")
        stopped = [name for name in targets if name not in waiting]
        return stopped, waiting, lost

    # --- what it is doing and what it spent ---------------------------------------

    def status(self) -> dict[str, Any]:
        """Every host's supervisor and every worker, and the task counts (see
        launcher/status.py); ``NotRunning`` if the swarm is not running."""
        from launcher.status import collect

        return collect(self.redis, self.name)

    def cost(self, by: str = "worker", since: float | None = None,
             limit: int = 20) -> dict[str, Any]:
        """What the swarm spent, by worker, host, pool, model or task (the dearest
        ``limit``), over the last ``since`` seconds or all along: ``rows`` (launcher.costs
        Row), ``reference_model`` and ``price_source``."""
        from launcher import costs

        if by not in costs.DIMS:
            raise SwarmError(f"--by must be one of {', '.join(costs.DIMS)}, not {by!r}")
        meta = self.redis.hgetall(keys.meta(self.name))
        if by == "task":
            rows = costs.rows_by_task(self.redis, self.name, limit, since)
        else:
            rows = costs.rows_by(costs.read_counters(self.redis, self.name, since), by)
        return {"rows": rows, "reference_model": meta.get("reference_model", ""),
                "price_source": meta.get("price_source", "unknown"),
                "subscription": [p for p in meta.get("subscription", "").split(",") if p]}

    def tasks(self, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The newest tasks first, optionally only those in ``state`` ('failed' includes
        the dead-lettered, as the counts do). SwarmError for a state that does not exist."""
        from workers.states import TaskState

        if state is not None and state not in set(TaskState):
            raise SwarmError(f"--state must be one of {', '.join(TaskState)}, not {state!r}")
        wanted = {state, "dead"} if state == "failed" else {state}
        found: list[dict[str, Any]] = []
        start = 0
        while len(found) < limit:
            ids = self.redis.zrevrange(keys.tasks(self.name), start, start + 499)
            if not ids:
                break
            start += len(ids)
            pipe = self.redis.pipeline(transaction=False)
            for task_id in ids:
                pipe.hgetall(keys.task_meta(self.name, task_id))
                pipe.get(keys.task(task_id))
            replies = pipe.execute()
            for task_id, meta, body in zip(ids, replies[0::2], replies[1::2]):
                if state is None or meta.get("state") in wanted:
                    found.append({"id": task_id, **_typed(meta),
                                  "description": _description(body)})
        return found[:limit]


_INT_FIELDS = ("attempts", "calls", "tokens", "input_side", "output", "cache_write",
               "cache_read", "nano", "nocache_nano", "ref_nano", "reserve")
_FLOAT_FIELDS = ("submitted", "started", "finished")


def _check_files(files: list[str], pool: str, meta: dict[str, str]) -> None:
    """Files a task names must be in its pool's workdir (checked where that folder is on
    this machine: another host's may differ)."""
    try:
        workdir = json.loads(meta.get("workdirs") or "{}").get(pool)
    except ValueError:
        workdir = None
    if not workdir or not Path(workdir).is_dir():
        return
    for name in files:
        if not (Path(workdir) / name).exists():
            raise SubmitError(f"no such file in pool {pool}'s workdir {workdir}: {name}")


def _description(body: str | None) -> str:
    try:
        value = json.loads(body or "")
    except ValueError:
        return ""
    return str(value.get("description", ""))[:500] if isinstance(value, dict) else ""


def _typed(meta: dict[str, str]) -> dict[str, Any]:
    """A task's record with its numbers as numbers."""
    out: dict[str, Any] = dict(meta)
    for name in _INT_FIELDS:
        if name in out:
            out[name] = int(out[name] or 0)
    for name in _FLOAT_FIELDS:
        if name in out:
            out[name] = float(out[name] or 0)
    return out


def submit(description: str, pool: str | None = None, files: Iterable[str] = (),
           swarm: str | None = None) -> str:
    return Swarm.find(swarm).submit(description, pool, files)


def wait(task_id: str, timeout: float | None = None, swarm: str | None = None) -> dict[str, Any]:
    return Swarm.find(swarm).wait(task_id, timeout)


def log_file(worker: str | None = None, swarm: str | None = None) -> Path:
    """The log file of ``worker`` (a slot name, ``haiku-1``) or of the supervisor, of the
    swarm whose state folder is here (or in a parent). SwarmError if there is none."""
    from launcher.state import NotFound, find

    try:
        state = find(swarm)
    except NotFound as exc:
        raise SwarmError(str(exc)) from None
    logs = state.read_info().get("logs")
    if not logs:
        raise SwarmError(f"swarm '{state.name}' has no log folder recorded; has it ever run?")
    name = (worker or "supervisor").rsplit("/", 1)[-1]  # a whole worker id works too
    path = Path(logs) / f"{name}.log"
    if not path.exists():
        known = sorted(p.stem for p in Path(logs).glob("*.log"))
        raise SwarmError(f"no log for {worker or 'supervisor'!r} in {logs} "
                         f"(have: {', '.join(known)})")
    return path
