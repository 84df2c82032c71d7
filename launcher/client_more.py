"""More of the Python API's ``Swarm`` (launcher/client.py), kept apart to stay
readable: naming a task by the start of its id, task control (cancel, retry, purge,
launcher/task_control.py), budgets and pauses, runs (launcher/runs.py) and findings
(workers/findings_index.py). Mixins over ``name`` (the swarm) and ``redis`` (a client)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from launcher.client_errors import SubmitError, SwarmError, check_text
from workers import keys


class Control:
    name: str
    redis: Any

    def resolve(self, prefix: str) -> str:
        """The task or run whose id is ``prefix``, or the only one it starts (as git takes
        a commit's prefix). SwarmError if none or several do."""
        if not prefix:
            raise SwarmError("an id is empty")
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(keys.task_meta(self.name, prefix))
        pipe.exists(keys.run(self.name, prefix))
        if any(pipe.execute()):
            return prefix
        found: list[str] = []
        pattern = _glob_escape(prefix) + "*"
        for index in (keys.tasks(self.name), keys.runs(self.name)):
            for member, _score in self.redis.zscan_iter(index, match=pattern, count=1000):
                if member not in found:
                    found.append(member)
                if len(found) > 50:
                    break
        # a run's tasks ({run}.{turn}.{n}) under its own id: the run is meant
        found = [f for f in found if not any(f.startswith(o + ".") for o in found)]
        if not found:
            raise SwarmError(f"no task or run {prefix!r} in swarm '{self.name}'")
        if len(found) > 1:
            listed = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
            raise SwarmError(f"{prefix!r} is the start of several ids ({listed}): give more")
        return found[0]

    # --- task control (launcher/task_control.py) --------------------------------------

    def cancel(self, task_id: str) -> str:
        """Cancel a task: 'queued' (cancelled now), 'running' (its worker stops it with
        its next beat), or the state it had already finished in."""
        from launcher import task_control

        return task_control.cancel(self.redis, self.name, self.resolve(task_id))

    def retry(self, task_id: str) -> str:
        """Queue a finished task again, attempts from 0; the state it was in. SwarmError
        if it is not finished (or belongs to a run)."""
        from launcher import task_control

        task_id = self.resolve(task_id)
        was = task_control.retry(self.redis, self.name, task_id)
        if was.startswith("no:"):
            raise SwarmError(f"task {task_id} cannot be retried: {was[3:]}")
        return was

    def purge(self, states: set[str] | None = None, older_than: float | None = None) -> int:
        """Forget finished tasks (in ``states``: default every finished state), those
        finished more than ``older_than`` seconds ago; how many."""
        from launcher import task_control
        from workers.states import FINISHED

        try:
            return task_control.purge(self.redis, self.name, set(states or FINISHED),
                                      older_than)
        except ValueError as exc:
            raise SwarmError(str(exc)) from None

    def resume(self) -> str | None:
        """Let the workers take new work again; the reason the swarm was paused, if it
        was. SwarmError if a budget still holds it (raise it with :meth:`set_budget`)."""
        from workers import budgets

        reason: str | None = self.redis.get(keys.paused(self.name))
        if budgets.is_budget_pause(reason):
            for row in self.budgets():
                if row["pool"] is None and row["usd"] is not None and \
                        row["spent_usd"] >= row["usd"]:
                    raise SwarmError(
                        f"the swarm's budget is still spent (${row['spent_usd']:.6f} of "
                        f"${row['usd']:g}): raise it first, `swarm budget USD`")
        self.redis.delete(keys.paused(self.name))
        return reason

    def budgets(self) -> list[dict[str, Any]]:
        """The budgets in force (the swarm's, then each pool's), what each has spent, and
        whether it holds its scope paused."""
        from workers import ledger_format

        values = self.redis.hgetall(keys.budgets(self.name))
        pools = sorted(self.redis.hkeys(keys.pools(self.name)))
        scopes: list[str | None] = [None, *pools]
        spent = self.redis.hmget(keys.ledger(self.name), [
            ledger_format.field("total", "*", "nano") if p is None else
            ledger_format.field("pool", p, "nano") for p in scopes])
        paused = self.redis.mget([keys.paused(self.name, p) for p in scopes])
        rows = []
        for scope, nano, why in zip(scopes, spent, paused):
            raw = values.get("swarm" if scope is None else f"pool:{scope}", "")
            rows.append({"pool": scope, "usd": float(raw) if raw else None,
                         "spent_usd": int(nano or 0) / 1e9, "paused": why})
        return rows

    def set_budget(self, usd: float | None, pool: str | None = None) -> float | None:
        """Set (or, with None, lift) the swarm's budget or ``pool``'s, in force at once
        and until the next `swarm up` reads the spec's again; a pause for the budget is
        lifted (the workers judge it anew). Returns the budget before."""
        from launcher import host_scripts

        if usd is not None and not usd > 0:
            raise SwarmError(f"a budget must be more than 0, not {usd:g}")
        if pool is not None and not self.redis.hexists(keys.pools(self.name), pool):
            raise SwarmError(f"swarm '{self.name}' has no pool {pool!r}")
        field = "swarm" if pool is None else f"pool:{pool}"
        before = self.redis.hget(keys.budgets(self.name), field)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.budgets(self.name), field, "" if usd is None else repr(usd))
        if pool is None:
            pipe.hset(keys.meta(self.name), "budget_usd", "" if usd is None else repr(usd))
        k, a = host_scripts.clear_budget_pause_args(self.name, pool)
        pipe.eval(host_scripts.CLEAR_BUDGET_PAUSE, len(k), *k, *a)
        pipe.execute()
        return float(before) if before else None



class RunsAndFindings:
    name: str
    redis: Any

    def run(self, goal: str, pool: str | None = None, budget_usd: float | None = None,
            max_tasks: int | None = None, max_in_flight: int | None = None,
            files: Iterable[str] = ()) -> str:
        """Give a lead pool a goal; returns the run's id. Limits not given are the lead
        pool's. SubmitError if it cannot start."""
        from launcher import runs

        check_text(goal)
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



def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


