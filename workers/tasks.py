"""Running tasks inside a worker: read deliveries from the pool's stream, claim each
with the seed's ``SET task:{id}:claimed NX EX``, run the agent, record the finding once.

At-least-once: a delivery stays pending in the consumer group until FINISH acknowledges
it together with the result, so a worker that dies mid-task leaves it pending, and the
supervisor hands it back the moment it reaps that worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from collections.abc import Callable

import redis

from workers import findings_index, keys, ledger_format, payload, scripts
from workers.agent import Agent, Outcome, SpendLimitReached
from workers.batch_caller import HeldBack
from workers.lead import Lead
from workers.lookup_tools import SwarmTools
from workers.budgets import from_redis
from workers.config import WorkerConfig
from workers.redis_retry import until_redis
from workers.report import Report
from workers.states import TaskState
from workers.tools import Toolbox
from workers.tool_base import one_line
from workers.finding import describe as _describe, failed as _failed, finding_of

log = logging.getLogger("swarm.worker")

HELD = "held"  # an outcome's status: the budget held a batch request back


class TaskRunner:
    """One worker process's tasks: ``concurrency`` at a time on its event loop."""

    def __init__(self, cfg: WorkerConfig, redis_client: Any, report: Report,
                 agent: Agent | Lead, toolbox: Callable[[], Toolbox]) -> None:
        self.cfg = cfg
        self.redis = redis_client
        self.report = report
        self.agent = agent
        self.toolbox = toolbox
        self.stream = keys.queue(cfg.swarm, cfg.pool)
        self.consumer = keys.consumer(cfg.worker_id, cfg.generation)
        self.claim_ttl = int(cfg.task_timeout) + 60
        self.inflight: set[asyncio.Task[None]] = set()
        self.running: dict[str, float] = {}  # task id -> monotonic start, once START ran
        self.working: dict[str, asyncio.Task[Outcome]] = {}  # task id -> its agent's run
        self.cancelling: set[str] = set()
        self._start_sha = ""  # loaded at boot; used inside a pipeline by its sha
        self._finish = redis_client.register_script(scripts.FINISH)
        self._hand_back = redis_client.register_script(scripts.HAND_BACK)
        self._escalate = redis_client.register_script(scripts.ESCALATE)
        self._spend_fields = [ledger_format.field("total", "*", "nano"),
                              ledger_format.field("pool", cfg.pool, "nano")]

    # --- reading the queue ---------------------------------------------------------

    async def ensure_group(self) -> None:
        await ensure_group(self.redis, self.stream)
        self._start_sha = await self.redis.script_load(scripts.START)

    async def consume(self) -> None:
        reader = self.cfg.redis.aio(socket_timeout=None)
        # an idle consumer blocks 5 s per read (stopping cancels the read at once)
        block_ms = 5000
        complained = False
        next_check = time.monotonic() + 15
        try:
            while not self.report.stopping.is_set():
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + 15
                    await self.recheck_pending()
                if self.report.paused:
                    await _sleep_unless(self.report.stopping, 0.5)
                    continue
                free = self.cfg.concurrency - len(self.inflight)
                if free <= 0:
                    await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    # [[stream, [(entry id, {field: value}), ...]], ...]
                    replies: Any = await reader.xreadgroup(
                        keys.GROUP, self.consumer, {self.stream: ">"}, count=free,
                        block=block_ms)
                    complained = False
                except Exception as exc:  # noqa: BLE001 - Redis away: wait, say so once
                    if not complained:
                        log.warning("cannot read the queue: %s", exc)
                        complained = True
                    if "NOGROUP" in str(exc):
                        await self.ensure_group()
                    await _sleep_unless(self.report.stopping, 0.5)
                    continue
                for _stream, entries in replies or []:
                    for entry_id, fields in entries:
                        self._spawn(entry_id, fields.get("task", ""))
        finally:
            await reader.aclose()

    def _spawn(self, entry_id: str, task_id: str) -> None:
        job = asyncio.create_task(self.run_entry(entry_id, task_id), name=f"entry {entry_id}")
        self.inflight.add(job)
        job.add_done_callback(self.inflight.discard)

    async def drain(self, grace: float) -> None:
        """On stop: let tasks in flight finish within ``grace``; cancel the rest (their
        deliveries stay pending, and the supervisor hands them back)."""
        if not self.inflight:
            return
        if self.cfg.batch is not None:  # waiting on batches: they go on from checkpoints
            grace = min(grace, 1.0)
        log.info("waiting up to %gs for %d task(s) in flight", grace, len(self.inflight))
        _done, pending = await asyncio.wait(set(self.inflight), timeout=grace)
        for job in pending:
            job.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
            log.info("handed back %d unfinished task(s)", len(pending))

    # --- one task ------------------------------------------------------------------

    async def run_entry(self, entry_id: str, task_id: str) -> None:
        try:
            await self._run_entry(entry_id, task_id)
        except asyncio.CancelledError:
            if self.cfg.batch is not None and task_id in self.running and \
                    self.report.stopping.is_set():  # it goes on from its checkpoint
                await asyncio.shield(self._give_back(entry_id, task_id, "", refund=True))
            raise
        except Exception as exc:
            log.exception("task %s: internal error; handed back as a failed attempt", task_id)
            await self._give_back(entry_id, task_id, f"internal error: {exc!r}"[:500],
                                  counted=task_id in self.running)
        finally:
            self.running.pop(task_id, None)

    async def _give_back(self, entry_id: str, task_id: str, reason: str,
                         counted: bool = True, refund: bool = False) -> None:
        """A try that failed outside the agent's own handling counts as an attempt (if
        START had not counted it yet, it is counted here): the task goes back to the
        queue, and after ``max_attempts`` it is dead-lettered with this reason, never
        retried for ever. ``refund``: a clean stop, the try does not count."""
        k, a = scripts.hand_back_args(self.cfg.swarm, self.cfg.pool, task_id, entry_id,
                                      self.consumer, refund, reason,
                                      charge=not counted and not refund)
        try:
            await until_redis(lambda: self._hand_back(keys=k, args=a), f"giving back {task_id}")
        except Exception:
            log.exception("task %s: could not be given back", task_id)

    async def _run_entry(self, entry_id: str, task_id: str) -> None:
        now = time.time()
        k, a = scripts.start_args(self.cfg.swarm, task_id, self.consumer, self.claim_ttl, now,
                                  self.cfg.max_attempts)
        verdict, raw, context, last_error, in_force, spent, paused, attempt = await until_redis(
            lambda: self._start_pipeline(k, a, task_id), f"claiming task {task_id}")
        if verdict == "run":
            self.running[task_id] = time.monotonic()  # START counted this attempt
            if await self._held_back(in_force, spent, paused, entry_id, task_id):
                return
        if verdict == "done" or verdict.startswith("taken:"):
            await self._ack(entry_id)
            if verdict.startswith("taken:"):
                log.info("task %s: claimed by %s, not ours", task_id, verdict[6:])
            return
        run = self._run_of(raw, task_id)
        if verdict == "exhausted":
            reason = f"gave up after {self.cfg.max_attempts} attempts"
            if last_error:
                reason += f"; last: {last_error}"
            await self._record(entry_id, task_id, _describe(raw), _failed(reason), run,
                               dead=True)
            return
        try:
            task = payload.parse(raw)
        except payload.PayloadError as exc:
            await self._record(entry_id, task_id, _describe(raw), _failed(str(exc)), run,
                               dead=True)
            return
        run_context = None
        if run and self.cfg.role != "lead":
            run_context = await until_redis(
                lambda: self.redis.get(keys.run_context(self.cfg.swarm, run)),
                f"reading the context of run {run}")
        self.report.task_started(task_id)
        log.info("task %s: started, attempt %s of %d: %s", task_id, attempt or "?",
                 self.cfg.max_attempts, one_line(task.description, 100))
        started = time.monotonic()
        try:
            outcome = await self._execute(task, context, task_id, run_context)
        finally:
            self.report.task_ended(task_id)
        log.info("task %s: %s in %.1fs, %d calls, %s%s", task_id, outcome.status,
                 time.monotonic() - started, outcome.calls,
                 "cost unknown" if outcome.nano is None else f"${outcome.nano / 1e9:.6f}",
                 f": {one_line(outcome.error, 200)}" if outcome.error else "")
        if outcome.status == HELD:  # back to the queue untouched: it goes on later
            k, a = scripts.hand_back_args(self.cfg.swarm, self.cfg.pool, task_id, entry_id,
                                          self.consumer, True, outcome.error or "")
            await until_redis(lambda: self._hand_back(keys=k, args=a), f"giving back {task_id}")
            return
        if outcome.status == TaskState.HANDED_BACK and not run and \
                await self._escalated(entry_id, task_id, task, outcome):
            await self._forget_turns(task_id)
            return
        await self._record(entry_id, task_id, task.description, outcome, run)

    async def _forget_turns(self, task_id: str) -> None:
        """A batch pool's task left the pool: its checkpoint is of no more use."""
        if self.cfg.batch is not None:
            await until_redis(lambda: self.redis.delete(keys.task_turn(self.cfg.swarm, task_id)),
                              f"forgetting task {task_id}'s checkpoint")

    async def _start_pipeline(self, k: list[str], a: list[str], task_id: str) -> list[Any]:
        """Claim, payload, shared context, last error and spending: one round trip."""
        if not self._start_sha:
            self._start_sha = await self.redis.script_load(scripts.START)
        try:
            return await self._start_once(k, a, task_id)
        except redis.ResponseError as exc:
            if not isinstance(exc, redis.exceptions.NoScriptError):
                raise
            self._start_sha = ""  # Redis restarted and forgot its scripts
            raise redis.ConnectionError("scripts were flushed") from exc

    async def _start_once(self, k: list[str], a: list[str], task_id: str) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.evalsha(self._start_sha, len(k), *k, *a)
        pipe.get(keys.task(task_id))
        pipe.get(keys.CONTEXT_ACTIVE)
        pipe.hget(keys.task_meta(self.cfg.swarm, task_id), "error")
        pipe.hgetall(keys.budgets(self.cfg.swarm))
        pipe.hmget(keys.ledger(self.cfg.swarm), self._spend_fields)
        pipe.mget(keys.paused(self.cfg.swarm), keys.paused(self.cfg.swarm, self.cfg.pool))
        pipe.hget(keys.task_meta(self.cfg.swarm, task_id), "attempts")
        return list(await pipe.execute())

    async def _held_back(self, in_force: dict[str, str], spent: list[str | None],
                         paused: list[str | None], entry_id: str, task_id: str) -> bool:
        """If the swarm or pool is paused, or a budget is used up, give the task back
        untouched (the attempt refunded): no new task starts; those running finish."""
        reason = next((why for why in paused if why), None)
        total, pool = (int(v or 0) for v in spent)
        for budget in from_redis(in_force, self.cfg.pool, self.cfg.budget_usd,
                                 self.cfg.pool_budget_usd):
            reached = budget.reached(total if budget.pool is None else pool)
            if reason is None and reached:
                reason = reached
                await self.report.pause(reason, budget.pool)
        if reason is None:
            return False
        self.report.paused = reason
        k, a = scripts.hand_back_args(self.cfg.swarm, self.cfg.pool, task_id, entry_id,
                                      self.consumer, True, reason)
        await until_redis(lambda: self._hand_back(keys=k, args=a), f"giving back {task_id}")
        return True

    def _run_of(self, raw: Any, task_id: str) -> str:
        """The run a task belongs to ('' if none); a lead's task is its run's own."""
        run = payload.run_of(raw)
        return (run or task_id) if self.cfg.role == "lead" else run

    async def _escalated(self, entry_id: str, task_id: str, task: payload.Task,
                         outcome: Outcome) -> bool:
        """A task handed back outside a run goes on to the pool's ``escalate_to``, once
        per pool; True if it went."""
        target = self.cfg.escalate_to
        earlier = task.extra.get("handed_back")
        earlier = earlier if isinstance(earlier, list) else []
        been = {self.cfg.pool, *(e.get("pool") for e in earlier if isinstance(e, dict))}
        if not target or target in been:
            return False
        note = {"pool": self.cfg.pool, "worker": self.cfg.worker_id, "reason": outcome.result}
        moved = payload.Task(task.description, task.files, target,
                             {**task.extra, "handed_back": [*earlier, note]})
        reason = f"handed back by {self.cfg.pool}: {outcome.result}"[:500]
        k, a = scripts.escalate_args(self.cfg.swarm, self.cfg.pool, target, task_id, entry_id,
                                     self.consumer, reason, payload.dump(moved))
        if await until_redis(lambda: self._escalate(keys=k, args=a), f"escalating {task_id}"):
            log.info("task %s handed back; escalated to pool %s", task_id, target)
            self.report.task_ended(task_id)
        return True

    async def _execute(self, task: payload.Task, context: str | None, task_id: str,
                       run_context: str | None = None) -> Outcome:
        toolbox = self.toolbox()
        scope = task.extra.get("lookup_run")
        toolbox.swarm = SwarmTools(
            self.redis, self.cfg.swarm, self.cfg.worker_id,
            run=scope if isinstance(scope, str) and scope else None,
            librarian=bool(self.cfg.librarians),
            timeout=float(self.cfg.tools.get("librarian_timeout", 60.0)))  # type: ignore[arg-type]
        work = asyncio.create_task(self.agent.run(task, toolbox, context, task_id, run_context),
                                   name=f"work {task_id}")
        self.working[task_id] = work
        try:
            async with asyncio.timeout(self.cfg.task_timeout):
                return await work
        except asyncio.CancelledError:
            if task_id not in self.cancelling or not work.cancelled():
                raise
            outcome = _failed("cancelled while it ran (swarm cancel)")
            outcome.status = TaskState.CANCELLED
        except TimeoutError:
            outcome = _failed(f"task timeout after {self.cfg.task_timeout:g}s")
        except SpendLimitReached as exc:
            await self.report.pause(f"API spend limit reached: {exc}")
            outcome = _failed(f"API spend limit reached: {exc}")
        except HeldBack as held:  # a batch request the budget does not admit
            await self.report.pause(held.reason, held.pool)
            outcome = _failed(held.reason)
            outcome.status = HELD
        finally:
            self.working.pop(task_id, None)
            self.cancelling.discard(task_id)
        outcome.files_changed = sorted(toolbox.files_changed)
        return outcome

    def cancel(self, task_ids: list[str]) -> None:
        """Stop these running tasks (`swarm cancel`): each ends cancelled."""
        for task_id in task_ids:
            work = self.working.get(task_id)
            if work is not None and not work.done():
                log.info("task %s: cancelled (swarm cancel)", task_id)
                self.cancelling.add(task_id)
                work.cancel()

    async def _record(self, entry_id: str, task_id: str, description: str,
                      outcome: Outcome, run: str = "", dead: bool = False) -> None:
        finding = finding_of(self.cfg, task_id, description, outcome)
        dead_json = json.dumps({"task": task_id, "reason": outcome.error, "ts": time.time(),
                                "worker": self.cfg.worker_id}) if dead else ""
        lead = self.cfg.role == "lead"
        run_state = ("failed" if outcome.status != TaskState.DONE else
                     "partial" if outcome.partial else "done")
        k, a = scripts.finish_args(
            self.cfg.swarm, self.cfg.pool, task_id, entry_id, finding["finding_id"],
            json.dumps(finding), outcome.status, outcome.error or "", dead_json, time.time(),
            run, "lead" if lead else "child", run_state, findings_index.document(finding))
        recorded = await until_redis(lambda: self._finish(keys=k, args=a),
                                     f"recording task {task_id}")
        await self._forget_turns(task_id)
        if not recorded:
            log.warning("task %s already had a result; this run's finding is dropped", task_id)
            return
        self.report.task_ended(task_id, done=outcome.status == TaskState.DONE)
        if outcome.status != TaskState.DONE:
            log.warning("task %s failed: %s", task_id, outcome.error)

    async def _ack(self, entry_id: str) -> None:
        async def ack() -> None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xack(self.stream, keys.GROUP, entry_id)
            pipe.xdel(self.stream, entry_id)
            await pipe.execute()

        await until_redis(ack, f"acknowledging {entry_id}")

    async def recheck_pending(self) -> None:
        """Catch-all: a delivery pending for this live worker that no task of ours is
        working on (its step failed in a way no retry covered) is run again."""
        try:
            pending = await self.redis.xpending_range(
                self.stream, keys.GROUP, min="-", max="+", count=1000,
                consumername=self.consumer, idle=10_000)
        except Exception:  # noqa: BLE001 - Redis away: next time
            return
        working = {job.get_name() for job in self.inflight}
        for item in pending:
            entry_id = item["message_id"]
            if f"entry {entry_id}" in working:
                continue
            entry = await self.redis.xrange(self.stream, entry_id, entry_id)
            task_id = entry[0][1].get("task", "") if entry else ""
            if not task_id:
                await self._ack(entry_id)
                continue
            log.warning("task %s was stranded on this worker; running it again", task_id)
            self._spawn(entry_id, task_id)

async def ensure_group(redis: Any, stream: str) -> None:
    try:
        await redis.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
    except Exception as exc:
        if "BUSYGROUP" not in str(exc):
            raise



async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        pass
