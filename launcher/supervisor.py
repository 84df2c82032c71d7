"""The supervisor of one host of a swarm: fork the workers, watch them, restart them.

The loop reads as its summary (after gunicorn's arbiter)::

    wait()          sleep until a signal, a worker's output, or the next tick
    reap()          collect exited children the moment SIGCHLD says so
    handle_signals()
    tick()          one Redis round trip: publish this host's state, read every lease,
                    take control commands; then judge hangs, memory and budgets and
                    act on the verdicts, and hand back what dead workers held
    manage()        start what is due, escalate kills whose grace ran out

Signal handlers only queue the signal (``signal.set_wakeup_fd`` wakes the select);
everything else happens in the loop. Time is ``time.monotonic()`` throughout. What to do
is decided by launcher/judge.py; this module does it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from launcher import commands, judge, proctree
from launcher.batch import Batch
from launcher.children import Children, Running
from launcher.events import EventLog
from launcher.fence import fence_for
from launcher.presence import Presence
from launcher.recovery import Returns, prepare_queues
from launcher.redis_health import RedisHealth
from launcher.redis_server import EmbeddedRedis
from launcher.signals import SignalQueue
from launcher.slot import (FATAL, HUNG, KILLING, RUNNING, STARTING, STOPPED, STOPPING, Slot,
                           SlotState)
from launcher.slot_table import SlotTable
from launcher.spawn import config_for
from launcher.spec import SwarmSpec
from launcher.state import StateDir
from workers import keys, ledger_format
from workers.budgets import Budget
from workers.budgets import in_force as budgets_in_force
from workers.config import EXIT_BOOT_FAILED, EXIT_ORPHANED
from workers.pricing import newest_sonnet
from workers.redis_target import RedisTarget

log = logging.getLogger("swarm.supervisor")

SAMPLE_EVERY = 2.0  # seconds between RSS/CPU samples of every worker
PUBLISH_EVERY = 2.0  # seconds between full slot tables written to Redis when nothing changed
_EXIT_MEANING = {EXIT_BOOT_FAILED: " (failed to boot)", EXIT_ORPHANED: " (orphaned)"}


@dataclass
class Supervisor:
    spec: SwarmSpec
    state: StateDir
    redis_target: RedisTarget
    embedded: EmbeddedRedis | None = None
    on_ready: Callable[[str | None], None] | None = None  # called once: None or a problem
    on_tick: Callable[[Supervisor], None] | None = None  # e.g. the live status view

    stopping_since: float | None = None
    stop_deadline: float | None = None
    stopped_at_once: str | None = None  # the reason of a stop without grace

    def __post_init__(self) -> None:
        spec = self.spec
        self.pid = os.getpid()
        self.host = spec.host_name
        self.redis = self.redis_target.sync(socket_timeout=5.0, socket_connect_timeout=2.0)
        self.events = EventLog(spec.name, self.host)
        self.reference_model = spec.reference_model or newest_sonnet()
        self.presence = Presence(self.redis, spec, self.host, self.pid, self.reference_model,
                                 self.embedded is not None)
        self.returns = Returns(self.redis, spec.name, self.host, list(spec.pools), self.events)
        self.fence = fence_for(spec)  # what of this host the tools may not touch
        self.spend_fields = [ledger_format.field("total", "*", "nano"),
                              *(ledger_format.field("pool", n, "nano") for n in spec.pools)]
        self._selector = selectors.DefaultSelector()
        self.signals = SignalQueue(self._selector)
        self.children = Children(self._selector, spec.logs, self.events,
                                 [self.signals.read_fd, self.signals.write_fd])
        self.running = self.children.running  # pid -> Running
        self.table = SlotTable(spec, self.host)
        self.slots = self.table.slots  # worker id -> Slot
        self.redis_health = RedisHealth(self.embedded, self.events,
                                        lambda why: self.stop(graceful=False, reason=why))
        self._dirty = True
        self._last_publish = self._last_sample = 0.0
        self._ready_sent = False
        self._budget_reached: set[str] = set()
        self.tick_interval = min([0.5] + [p.heartbeat.expiry / 4 for p in spec.pools.values()])
        # after Redis was away (or came back empty), leases are not judged for this long
        self.lease_grace = max(p.heartbeat.expiry for p in spec.pools.values())

    def claim_host(self) -> None:
        """This host's lease in the swarm, or ``HostTaken`` (see launcher/presence.py)."""
        self.presence.claim()

    # --- the loop ------------------------------------------------------------------

    def run(self) -> int:
        self.signals.install()
        proctree.become_subreaper()
        self.presence.register()
        self.returns.at_start(self.spec.seed_protocol, str(self.spec.default_pool))
        self.events.record("swarm_start", pid=self.pid, workers=len(self.slots))
        try:
            while True:
                self.wait(self._next_timeout())
                self.reap()
                self.handle_signals()
                self.tick()
                self.manage()
                if self.on_tick:
                    self.on_tick(self)
                if self.stopping_since is not None and not self.running and not self._due():
                    break
        finally:
            self._finish()
        # stopped at once by a second Ctrl-C: the shell's convention for SIGINT, 128 + 2
        return 130 if self.stopped_at_once == "SIGINT twice" else 0

    def wait(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            if key.fd == self.signals.read_fd:
                self.signals.drain()
            elif isinstance(key.data, Running):
                self.children.read_output(key.data)

    def _next_timeout(self) -> float:
        now = time.monotonic()
        wake = now + self.tick_interval
        for slot in self.slots.values():
            if slot.next_start is not None and slot.pid is None:
                wake = min(wake, slot.next_start)
            if slot.kill_at is not None:
                wake = min(wake, slot.kill_at)
        if self.stop_deadline is not None:
            wake = min(wake, self.stop_deadline)
        return max(0.0, wake - now)

    # --- signals -------------------------------------------------------------------

    def handle_signals(self) -> None:
        for sig in self.signals.take():
            if sig == signal.SIGCHLD:
                continue  # reap() runs every turn of the loop
            if sig == signal.SIGQUIT or (sig == signal.SIGINT and self.stopping_since):
                self.stop(graceful=False, reason=signal.Signals(sig).name +
                          (" twice" if sig == signal.SIGINT else ""))
            else:
                self.stop(graceful=True, reason=signal.Signals(sig).name)

    # --- reaping -------------------------------------------------------------------

    def reap(self) -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            pid = info.si_pid
            if pid in self.running:
                proctree.kill_group(pid)  # stragglers of its group, before the pid is freed
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                continue
            if self.embedded and pid == self.embedded.pid:
                self.redis_health.died(status, self.stopping_since is not None)
            elif pid in self.running:
                self._worker_exited(pid, status)

    def _worker_exited(self, pid: int, status: int) -> None:
        slot = self.children.exited(pid).slot
        reason = proctree.describe_status(status)
        if os.WIFEXITED(status):
            reason += _EXIT_MEANING.get(os.WEXITSTATUS(status), "")
        if slot.state in (HUNG, KILLING):
            reason = f"{slot.last_exit}; {reason}"
        elif os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            reason += (f" (the swarm was stopped at once: {self.stopped_at_once})"
                       if self.stopped_at_once else " (out of memory, or killed from outside?)")
        clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        self.events.record("exit", slot, pid=pid, reason=reason,
                           ran=round(time.monotonic() - slot.started_at, 3), clean=clean)
        self._forget_lease(slot)
        self.returns.returned(slot.pool, slot.consumer, f"{slot.consumer} {reason}", clean)
        delay = slot.exited(reason, time.monotonic())
        if delay is not None:
            self.events.record("restart_scheduled", slot, delay=round(delay, 3))
        elif slot.state == FATAL:
            self.events.record("fatal", slot, reason=reason, restarts=slot.restarts,
                               window=slot.policy.window, level=logging.ERROR)
        self._dirty = True

    def _forget_lease(self, slot: Slot) -> None:
        with contextlib.suppress(Exception):  # Redis down: the keys expire by themselves
            self.redis.delete(keys.heartbeat(slot.worker_id),
                              keys.lease(self.spec.name, slot.consumer))

    # --- starting workers ----------------------------------------------------------

    def _due(self) -> bool:
        now = time.monotonic()
        return any(slot.due(now) for slot in self.slots.values())

    def manage(self) -> None:
        now = time.monotonic()
        if self.stopping_since is None:
            for slot in list(self.slots.values()):
                if slot.due(now):
                    self._spawn(slot)
        self._escalate(now)
        if self.stopping_since is None:
            for worker_id in self.table.done_with():
                self._drop_slot(worker_id)

    def _spawn(self, slot: Slot) -> None:
        cfg = config_for(self.spec, slot, self.host, self.redis_target, self.pid,
                         self.reference_model, self.fence)
        now = time.monotonic()
        try:
            pid = self.children.start(slot, cfg, now)
        except OSError as exc:
            self.events.record("spawn_failed", slot, error=str(exc), level=logging.ERROR)
            slot.started(-1, now)
            slot.pid = None
            slot.exited(f"fork failed: {exc}", now)
            return
        self.table.started(slot)
        self.events.record("restart" if slot.generation > 1 else "start", slot, pid=pid)
        self._dirty = True

    # --- the tick: one round trip --------------------------------------------------

    def tick(self) -> None:
        now = time.monotonic()
        live = [p.slot for p in self.running.values()]
        sample = now - self._last_sample >= SAMPLE_EVERY
        if sample:
            self._last_sample = now
            self.children.sample()
            self._act(judge.over_memory(live, self._memory_limit))  # no Redis needed
        publish = self._dirty or sample or now - self._last_publish >= PUBLISH_EVERY
        batch = Batch(self.redis)
        if publish:
            batch.add(lambda p: self.presence.publish(p, self.slots, self.table.targets,
                                                      self.stopping_since is not None))
        batch.add(self.events.flush_into)
        batch.add(lambda p: p.hgetall(keys.budgets(self.spec.name)), "budgets")
        batch.add(lambda p: p.hmget(keys.ledger(self.spec.name), self.spend_fields), "spent")
        batch.add(lambda p: p.mget([keys.lease(self.spec.name, s.consumer) for s in live]
                                   or ["-"]), "leases")
        batch.add(lambda p: p.lpop(keys.host_control(self.spec.name, self.host), 100),
                  "commands")
        batch.add(lambda p: p.sismember(keys.REGISTRY, self.spec.name), "registered")
        try:
            replies = batch.execute()
            if not replies["registered"]:  # Redis came back without our records
                self._register_again(now)
                return
            self.returns.flush()
            quiet = now - self.redis_health.ok_since
            if quiet >= self.lease_grace and self.stopping_since is None:
                self.returns.reap({s.consumer for s in live})
        except Exception as exc:  # noqa: BLE001 - Redis is down; keep the workers alive
            self.redis_health.unreachable(exc, self.stopping_since is not None)
            return
        self.redis_health.answered(now)
        if publish:
            self._dirty, self._last_publish = False, now
        self._judge_leases(live, replies["leases"], now)
        for raw in replies["commands"] or []:
            self._command(raw)
        in_force = budgets_in_force(replies["budgets"] or {}, self.spec.budget_usd,
                                    {n: p.budget_usd for n, p in self.spec.pools.items()})
        spent = dict(zip(self.spend_fields, replies["spent"]))
        self._pause_spent(judge.spent(in_force, [spent.get(b.field) for b in in_force],
                                      self._budget_reached))
        self._maybe_ready()

    def _judge_leases(self, live: list[Slot], leases: list[str | None], now: float) -> None:
        for slot in judge.first_beats(live, leases):
            slot.seen_beat = True
            if slot.state == STARTING:
                slot.state = RUNNING
            self._dirty = True
        expiry = self._expiry
        self._act(judge.hung(live, leases, now, self.redis_health.ok_since, expiry))

    def _expiry(self, slot: Slot) -> float:
        return self.spec.pools[slot.pool].heartbeat.expiry

    def _memory_limit(self, slot: Slot) -> int | None:
        return self.spec.pools[slot.pool].memory_limit

    def _act(self, kills: list[judge.Kill]) -> None:
        for kill in kills:
            self.children.kill(kill, self.spec.kill_grace)
            self._dirty = True

    def _pause_spent(self, spent: list[tuple[Budget, str]]) -> None:
        """A budget used up pauses new work (once; workers also check at each start)."""
        for budget, reason in spent:
            self._budget_reached.add(judge.budget_said(budget))
            self.redis.set(keys.paused(self.spec.name, budget.pool), reason)
            self.events.record("budget_reached", who=budget.who, budget_usd=budget.usd,
                               reason=reason, level=logging.WARNING)

    def _escalate(self, now: float) -> None:
        self.children.escalate(now)
        if self.stop_deadline is not None and now >= self.stop_deadline and self.running:
            self.stop_deadline = None
            self.children.kill_all("stop grace over")

    # --- control: commands from the control list (launcher/commands.py) -------------

    def _command(self, raw: str) -> None:
        commands.handle(self, raw)

    def dirty(self) -> None:
        """Something changed that the slot table in Redis must show at the next tick."""
        self._dirty = True

    def _drop_slot(self, worker_id: str) -> None:
        del self.slots[worker_id]
        with contextlib.suppress(Exception):  # Redis down: the next publish corrects it
            self.redis.hdel(keys.host_slots(self.spec.name, self.host), worker_id)
            self.redis.delete(keys.worker(self.spec.name, worker_id))

    # --- stopping ------------------------------------------------------------------

    def stop(self, graceful: bool, reason: str) -> None:
        now = time.monotonic()
        if self.stopping_since is None:
            self.stopping_since = now
            self.events.record("swarm_stop", reason=reason, graceful=graceful)
            for slot in self.slots.values():
                slot.next_start = None
                if slot.pid is None:
                    slot.state = FATAL if slot.state == FATAL else STOPPED
                elif slot.state not in (HUNG, KILLING):
                    slot.state = STOPPING
                    proctree.signal_tree(slot.pid, signal.SIGTERM)
            self.stop_deadline = now + self.spec.stop_grace + self.spec.kill_grace
            self._dirty = True
        if not graceful:
            self.stop_deadline = now
            self.stopped_at_once = reason

    def _finish(self) -> None:
        """Whatever happened, leave nothing running; then leave the swarm."""
        self.children.signal_all(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.running and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.01)
        self.events.record("swarm_stopped")
        try:
            pipe = self.redis.pipeline(transaction=False)
            self.events.flush_into(pipe)
            self.presence.leave(pipe)
            for slot in self.slots.values():
                pipe.delete(keys.worker(self.spec.name, slot.worker_id))
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis gone: the host's lease expires
            log.warning("could not leave the swarm in Redis: %s", exc)
        self.redis.close()
        if self.embedded:
            self.embedded.stop()
        self.state.clear_runtime()
        if not self._ready_sent and self.on_ready:
            self._ready_sent = True
            self.on_ready("the swarm stopped before all workers were up")

    # --- Redis ---------------------------------------------------------------------

    def _register_again(self, now: float) -> None:
        """Redis came back empty: say so, and register again (registry, meta, host,
        groups); the workers' next beats restore their leases."""
        self.redis_health.forgot(now)
        self.presence.register()
        prepare_queues(self.redis, self.spec.name, list(self.spec.pools))
        self._dirty = True

    def _maybe_ready(self) -> None:
        if self._ready_sent or self.on_ready is None:
            return
        ready, problem = judge.readiness(list(self.slots.values()))
        if ready:
            self._ready_sent = True
            self.on_ready(problem)


__all__ = ["Supervisor", "SlotState"]
