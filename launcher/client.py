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
from workers import keys, scripts
from workers.payload import Task, dump



class SwarmError(Exception):
    """A request the swarm cannot do; ``str()`` says why in one line."""


class SubmitError(SwarmError):
    """The task was not accepted; ``str()`` says why in one line."""


def _check_text(text: str) -> None:
    """Text that cannot be sent to the API (lone surrogates, as from command-line bytes
    that are not UTF-8) is refused here, not failed at every try in a worker."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SubmitError(f"the task's text is not valid UTF-8: {text[exc.start]!a} at "
                          f"character {exc.start} (bytes that are not UTF-8?)") from None


@dataclass
class Swarm:
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
            _check_text(text)
        if task_ids is not None and len(task_ids) != len(descriptions):
            raise SubmitError("task_ids and descriptions differ in length")
        pool = self._pool(pool)
        ids = task_ids or [f"task_{uuid.uuid4().hex[:16]}" for _ in descriptions]
        script = self.redis.register_script(scripts.ENQUEUE)
        files = list(files)
        for start in range(0, len(ids), 1000):
            pipe = self.redis.pipeline(transaction=False)
            for task_id, text in zip(ids[start:start + 1000], descriptions[start:start + 1000]):
                pipe.set(keys.task(task_id), dump(Task(text, files, pool, {"swarm": self.name})))
                k, a = scripts.enqueue_args(self.name, pool, task_id, "submit", time.time())
                script(keys=k, args=a, client=pipe)
                pipe.publish(keys.CHANNEL_TASKS, task_id)
            pipe.execute()
        return ids

    def _pool(self, pool: str | None) -> str:
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
        return pool

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

    # --- runs: a goal for a lead (launcher/runs.py) -----------------------------------

    def run(self, goal: str, pool: str | None = None, budget_usd: float | None = None,
            max_tasks: int | None = None, max_in_flight: int | None = None,
            files: Iterable[str] = ()) -> str:
        """Give a lead pool a goal; returns the run's id. Limits not given are the lead
        pool's. SubmitError if it cannot start."""
        from launcher import runs

        _check_text(goal)
        try:
            return runs.start(self.redis, self.name, goal, pool, budget_usd, max_tasks,
                              max_in_flight, files)
        except runs.RunError as exc:
            raise SubmitError(str(exc)) from None

    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest runs first: state, tasks handed out and back, spend, budget."""
        from launcher import runs

        return runs.listing(self.redis, self.name, limit)

    def run_info(self, run_id: str) -> dict[str, Any] | None:
        """A run as a tree: its record, spend, each task and its finding, its result."""
        from launcher import runs

        return runs.tree(self.redis, self.name, run_id)

    def wait_run(self, run_id: str, timeout: float | None = None,
                 on_progress: Any = None) -> dict[str, Any]:
        """Block until the run ends (TimeoutError after ``timeout``); returns
        ``run_info``. ``on_progress(summary)`` is called as the run moves on."""
        from launcher import runs

        try:
            return runs.wait(self.redis, self.name, run_id, timeout, on_progress)
        except runs.RunError as exc:
            raise SwarmError(str(exc)) from None

    # --- findings: search and read (workers/findings_index.py) ------------------------

    def search_findings(self, query: str, limit: int = 10,
                        run: str | None = None) -> list[dict[str, Any]]:
        """The findings that best match ``query``'s words (finding_id, task_id, status,
        pool, excerpt), among the newest (a bounded scan) or ``run``'s own."""
        from workers.findings_index import search_sync

        return search_sync(self.redis, self.name, query, limit, run)

    def finding(self, finding_id: str) -> dict[str, Any] | None:
        """A finding, whole."""
        raw = self.redis.get(keys.finding(finding_id))
        try:
            found = json.loads(raw) if raw else None
        except ValueError:
            return None
        return found if isinstance(found, dict) else None

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
                "price_source": meta.get("price_source", "unknown")}

    def resume(self) -> str | None:
        """Let the workers take new work again; the reason the swarm was paused, if it
        was."""
        reason: str | None = self.redis.getdel(keys.paused(self.name))
        return reason

    def tasks(self, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The newest tasks first, optionally only those in ``state``."""
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
            for task_id, meta in zip(ids, pipe.execute()):
                if state is None or meta.get("state") == state:
                    found.append({"id": task_id, **meta})
        return found[:limit]


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
