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
from typing import Any, Iterable

from workers import keys, scripts
from workers.payload import Task, dump

DONE_STATES = ("done", "failed", "dead")


class SubmitError(Exception):
    """The task was not accepted; ``str()`` says why in one line."""


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
        if task_ids is not None and len(task_ids) != len(descriptions):
            raise SubmitError("task_ids and descriptions differ in length")
        pool = self._pool(pool)
        ids = task_ids or [f"task_{uuid.uuid4().hex[:16]}" for _ in descriptions]
        script = self.redis.register_script(scripts.ENQUEUE)
        files = list(files)
        for start in range(0, len(ids), 1000):
            pipe = self.redis.pipeline(transaction=False)
            for task_id, text in zip(ids[start:start + 1000], descriptions[start:start + 1000]):
                pipe.set(keys.task(task_id), dump(Task(text, files, pool)))
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
