"""The supervisor: fork the workers, watch them, restart them.

The loop reads as its summary (after gunicorn's arbiter)::

    wait()          sleep until a signal, a worker's output, or the next tick
    reap()          collect exited children the moment SIGCHLD says so
    handle_signals()
    tick()          one Redis round trip: publish state, read every heartbeat,
                    take control commands; then judge hangs and memory
    manage()        start what is due, escalate kills whose grace ran out

Signal handlers only queue the signal (``signal.set_wakeup_fd`` wakes the select);
everything else happens in the loop. Time is ``time.monotonic()`` throughout.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import psutil

from launcher import proctree, recovery
from launcher.events import EventLog
from launcher.fence import fence_for
from launcher.logfiles import SlotLog
from launcher.redis_server import EmbeddedRedis
from launcher.slot import (
    FATAL,
    HUNG,
    KILLING,
    RESTARTING,
    RETIRING,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    Slot,
)
from launcher.spawn import fork_worker
from launcher.spec import SwarmSpec
from launcher.state import StateDir, pid_alive, process_started
from workers import keys, scripts
from workers.config import EXIT_BOOT_FAILED, EXIT_ORPHANED, SEED_LISTENERS, WorkerConfig
from workers.pricing import source as price_source_of
from workers.redis_target import RedisTarget

log = logging.getLogger("swarm.supervisor")

SAMPLE_EVERY = 2.0  # seconds between RSS/CPU samples of every worker
PUBLISH_EVERY = 2.0  # seconds between full slot tables written to Redis when nothing changed
_EXIT_MEANING = {EXIT_BOOT_FAILED: " (failed to boot)", EXIT_ORPHANED: " (orphaned)"}


@dataclass
class Running:
    """What the supervisor holds for a live worker process."""

    slot: Slot
    fd: int
    log: SlotLog
    meter: proctree.Meter | None = None
    polite_sent_at: float | None = None


@dataclass
class Supervisor:
    spec: SwarmSpec
    state: StateDir
    redis_target: RedisTarget
    embedded: EmbeddedRedis | None = None
    on_ready: Callable[[str | None], None] | None = None  # called once: None or a problem
    on_tick: Callable[[Supervisor], None] | None = None  # e.g. the live status view

    slots: dict[str, Slot] = field(default_factory=dict)
    running: dict[int, Running] = field(default_factory=dict)  # pid -> process
    targets: dict[str, int] = field(default_factory=dict)  # pool -> wanted workers
    beats: dict[str, str | None] = field(default_factory=dict)  # last heartbeat values
    stopping_since: float | None = None
    stop_deadline: float | None = None

    def __post_init__(self) -> None:
        self.pid = os.getpid()
        self.host = self.spec.host_name
        self.redis = self.redis_target.sync(socket_timeout=5.0, socket_connect_timeout=2.0)
        self.events = EventLog(self.spec.name, self.host)
        self._started = time.time()
        self._signals: list[int] = []
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._generations: dict[str, int] = {}
        self._dirty = True
        self._last_publish = 0.0
        self._last_sample = 0.0
        self._redis_ok = True
        self._redis_ok_since = time.monotonic()
        self._ready_sent = False
        self._handbacks: list[tuple[str, str, str, bool]] = []  # waiting for Redis
        self._budget_reached: set[str] = set()
        from workers.pricing import newest_sonnet

        self.reference_model = self.spec.reference_model or newest_sonnet()
        self.fence = fence_for(self.spec)  # what of this host the tools may not touch
        self.tick_interval = min(
            [0.5] + [p.heartbeat.expiry / 4 for p in self.spec.pools.values()]
        )
        # after Redis was away (or came back empty), leases are not judged for this long
        self.lease_grace = max(p.heartbeat.expiry for p in self.spec.pools.values())
        for pool_name, pool in self.spec.pools.items():
            self.targets[pool_name] = pool.workers
            for index in range(1, pool.workers + 1):
                self._add_slot(pool_name, index)

    # --- the loop ------------------------------------------------------------------

    def claim_host(self) -> None:
        """Take this host's lease in the swarm, or ``HostTaken`` if a live supervisor
        holds it (the same host name on another machine, or a second `swarm up`)."""
        name, now = self.spec.name, time.time()
        me = f"{host_identity()}:{process_started(self.pid)}"
        k, a = scripts.claim_host_args(name, self.host, self.pid, me, now)
        script = self.redis.register_script(scripts.CLAIM_HOST)
        held = script(keys=k, args=a)
        if held == "ok":
            return
        pid, boot = str(held[0]), str(held[1])
        where, _, started = boot.rpartition(":")
        if where == host_identity() and not (pid.isdigit() and pid_alive(int(pid)) and
                                             process_started(int(pid)) == started):
            k, a = scripts.claim_host_args(name, self.host, self.pid, me, now, f"{pid} {boot}")
            if script(keys=k, args=a) == "ok":  # its supervisor died on this machine
                return
        raise HostTaken(
            f"swarm '{name}' already runs on a host named '{self.host}' (supervisor pid "
            f"{pid}); each host needs its own name (host: in the spec, or SWARM_HOST). "
            f"If that host is gone, its lease ends within {keys.HOST_LEASE_MS // 1000} s")

    def run(self) -> int:
        self._install_signals()
        proctree.become_subreaper()
        self._register()
        self._recover()
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
        return 0

    def wait(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            fd = key.fd
            if fd == self._wake_r:
                self._drain_wakeup()
            else:
                self._read_output(fd, key.data)

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

    def _install_signals(self) -> None:
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                    signal.SIGQUIT):
            signal.signal(sig, self._queue_signal)

    def _queue_signal(self, sig: int, _frame: Any) -> None:
        self._signals.append(sig)  # NO logging, just queue the signal

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig == signal.SIGCHLD:
                continue  # reap() runs every turn of the loop
            if sig == signal.SIGQUIT or (sig == signal.SIGINT and self.stopping_since):
                self.stop(graceful=False, reason=signal.Signals(sig).name)
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
                self._redis_died(status)
            elif pid in self.running:
                self._worker_exited(pid, status)

    def _worker_exited(self, pid: int, status: int) -> None:
        proc = self.running.pop(pid)
        self._read_output(proc.fd, proc, drain=True)
        self._close_output(proc)
        slot = proc.slot
        reason = proctree.describe_status(status)
        if os.WIFEXITED(status):
            reason += _EXIT_MEANING.get(os.WEXITSTATUS(status), "")
        if slot.state in (HUNG, KILLING):
            reason = f"{slot.last_exit}; {reason}"
        elif os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            reason += " (out of memory, or killed from outside?)"
        ran = time.monotonic() - slot.started_at
        clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        self.events.record(
            "exit", slot, pid=pid, reason=reason, ran=round(ran, 3), clean=clean
        )
        self._forget_beat(slot)
        self._handbacks.append((slot.pool, slot.consumer, f"{slot.consumer} {reason}", clean))
        self._hand_back()
        delay = slot.exited(reason, time.monotonic())
        if delay is not None:
            self.events.record("restart_scheduled", slot, delay=round(delay, 3))
        elif slot.state == FATAL:
            self.events.record(
                "fatal", slot, reason=reason, restarts=slot.restarts,
                window=slot.policy.window, level=logging.ERROR,
            )
        self._dirty = True

    def _hand_back(self) -> None:
        """Requeue the deliveries of exited workers; kept for later if Redis is away."""
        while self._handbacks:
            pool, consumer, reason, clean = self._handbacks[0]
            try:
                count = recovery.hand_back(self.redis, self.spec.name, pool, consumer,
                                           reason, refund=clean)
            except Exception as exc:  # noqa: BLE001 - Redis down: retry next tick
                log.warning("cannot hand back %s's tasks yet: %s", consumer, exc)
                return
            calls, bound = recovery.lose_calls(self.redis, self.spec.name, f"{consumer}|*")
            self._handbacks.pop(0)
            if count:
                self.events.record("handed_back", consumer=consumer, tasks=count)
            if calls:
                self.events.record("calls_lost", consumer=consumer, calls=calls,
                                   bound_usd=f"{bound / 1e9:.6f}", level=logging.WARNING)

    def _recover(self) -> None:
        """At start: what this host's earlier run left (its deliveries, its calls in
        flight) and what other hosts' dead workers hold; then seed tasks nobody heard."""
        name, pools = self.spec.name, list(self.spec.pools)
        recovery.prepare_queues(self.redis, name, pools)
        self._reap(set())
        calls, bound = recovery.lose_calls(self.redis, name, keys.worker_id(name, self.host, "*"))
        if calls:
            self.events.record("calls_lost", consumer="(earlier run)", calls=calls,
                               bound_usd=f"{bound / 1e9:.6f}", level=logging.WARNING)
        if self.spec.seed_protocol:
            found = recovery.scan_seed_tasks(self.redis, name, str(self.spec.default_pool),
                                             pools)
            if found:
                self.events.record("seed_tasks_found", tasks=found)

    def _reap(self, live: set[str]) -> None:
        """Hand back what the swarm's dead consumers hold (see ``recovery.reap``)."""
        for dead in recovery.reap(self.redis, self.spec.name, self.host,
                                  list(self.spec.pools), live):
            if dead.tasks:
                self.events.record("handed_back", consumer=dead.consumer, tasks=dead.tasks)
            if dead.calls:
                self.events.record("calls_lost", consumer=dead.consumer, calls=dead.calls,
                                   bound_usd=f"{dead.bound_nano / 1e9:.6f}",
                                   level=logging.WARNING)

    def _forget_beat(self, slot: Slot) -> None:
        self.beats.pop(slot.worker_id, None)
        try:
            self.redis.delete(keys.heartbeat(slot.worker_id),
                              keys.lease(self.spec.name, slot.consumer))
        except Exception:  # noqa: BLE001 - Redis down: the keys expire by themselves
            pass

    # --- starting workers ----------------------------------------------------------

    def _add_slot(self, pool: str, index: int) -> Slot:
        slot = Slot(pool, index, self.spec.pools[pool].restart,
                    keys.worker_id(self.spec.name, self.host, keys.slot_name(pool, index)))
        slot.generation = self._generations.get(slot.worker_id, 0)
        self.slots[slot.worker_id] = slot
        return slot

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
        for worker_id in [w for w, s in self.slots.items() if s.state == STOPPED and
                          s.pid is None and self.stopping_since is None]:
            self._drop_slot(worker_id)

    def _spawn(self, slot: Slot) -> None:
        pool = self.spec.pools[slot.pool]
        cfg = WorkerConfig(
            swarm=self.spec.name,
            worker_id=slot.worker_id,
            host=self.host,
            slot=slot.name,
            pool=slot.pool,
            generation=slot.generation + 1,
            redis=self.redis_target,
            model=pool.model,
            concurrency=pool.concurrency,
            heartbeat_interval=float(pool.heartbeat.interval or pool.heartbeat.expiry / 3),
            heartbeat_expiry=pool.heartbeat.expiry,
            task_timeout=pool.task_timeout,
            stop_grace=self.spec.stop_grace,
            workdir=str(pool.workdir),
            env=dict(pool.env),
            on_start=pool.on_start,
            parent_pid=self.pid,
            default_pool=str(self.spec.default_pool),
            seed_listener=self.spec.seed_protocol and slot.index <= SEED_LISTENERS,
            pools=tuple(self.spec.pools),
            max_attempts=pool.max_attempts,
            max_turns=pool.max_turns,
            max_tokens=pool.max_tokens,
            max_retries=pool.max_retries,
            tools=pool.tools.model_dump(mode="json"),
            fence=self.fence,
            prices={m: o.rates() for m, o in self.spec.prices.items()},
            reference_model=self.reference_model,
            max_cost_usd=pool.max_cost_usd,
            budget_usd=self.spec.budget_usd,
            pool_budget_usd=pool.budget_usd,
            rate_limit=(self.spec.rate_limits[pool.model].model_dump()
                        if pool.model in self.spec.rate_limits else {}),
        )
        close = [self._wake_r, self._wake_w] + [p.fd for p in self.running.values()]
        try:
            pid, fd = fork_worker(cfg, close)
        except OSError as exc:
            self.events.record("spawn_failed", slot, error=str(exc), level=logging.ERROR)
            slot.started(-1, time.monotonic())
            slot.pid = None
            slot.exited(f"fork failed: {exc}", time.monotonic())
            return
        now = time.monotonic()
        restart = slot.generation > 0
        slot.started(pid, now)
        self._generations[slot.worker_id] = slot.generation
        path = self.spec.logs.dir / f"{slot.name}.log"
        proc = Running(slot, fd, SlotLog(path, self.spec.logs))
        try:
            proc.meter = proctree.Meter(pid)
        except psutil.Error:
            proc.meter = None
        self.running[pid] = proc
        self._selector.register(fd, selectors.EVENT_READ, proc)
        self.events.record("restart" if restart else "start", slot, pid=pid)
        self._dirty = True

    # --- output --------------------------------------------------------------------

    def _read_output(self, fd: int, proc: Running, drain: bool = False) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return
                raise
            if not data:
                if not drain:
                    self._close_output(proc)
                return
            proc.log.feed(data)
            if not drain and len(data) < 65536:
                return

    def _close_output(self, proc: Running) -> None:
        if proc.fd < 0:
            return
        try:
            self._selector.unregister(proc.fd)
        except (KeyError, ValueError):
            pass
        os.close(proc.fd)
        proc.fd = -1
        proc.log.close()

    # --- the tick: one round trip --------------------------------------------------

    def tick(self) -> None:
        now = time.monotonic()
        live = [p.slot for p in self.running.values()]
        sample = now - self._last_sample >= SAMPLE_EVERY
        if sample:
            self._sample(now)
            self._judge_memory(now)  # needs no Redis: done even while it is down
        pipe = self.redis.pipeline(transaction=False)
        publish = self._dirty or sample or now - self._last_publish >= PUBLISH_EVERY
        if publish:
            self._queue_publish(pipe)
        self.events.flush_into(pipe)
        budgets = self._budgets()
        if budgets:
            pipe.hmget(keys.ledger(self.spec.name), [field for field, *_ in budgets])
        pipe.mget([keys.lease(self.spec.name, s.consumer) for s in live] or ["-"])
        pipe.lpop(keys.host_control(self.spec.name, self.host), 100)
        pipe.sismember(keys.REGISTRY, self.spec.name)
        try:
            results = pipe.execute()
            if not results[-1]:  # Redis came back without our records
                self._redis_forgot(now)
                return
            if self._handbacks:
                self._hand_back()
            if now - self._redis_ok_since >= self.lease_grace and self.stopping_since is None:
                self._reap({s.consumer for s in live})
        except Exception as exc:  # noqa: BLE001 - Redis is down; keep the workers alive
            self._redis_unreachable(exc)
            return
        if not self._redis_ok:
            self._redis_ok = True
            self._redis_ok_since = now
            self.events.record("redis_back")
        if publish:
            self._dirty = False
            self._last_publish = now
        self._judge_heartbeats(live, results[-3], now)
        for raw in results[-2] or []:
            self._control(raw)
        if budgets:
            self._judge_budgets(budgets, results[-4])
        self._maybe_ready()

    def _redis_forgot(self, now: float) -> None:
        """Redis restarted empty (an external server without persistence): what the
        swarm had queued there is gone. Say so, register again (registry, meta, host,
        groups), and give every worker a full expiry to beat again before judging it."""
        self.events.record("redis_lost_data", level=logging.ERROR,
                           reason="Redis came back without this swarm's records (no "
                                  "persistence?): queued tasks and cost history are lost")
        self._redis_ok_since = now
        self._register()
        recovery.prepare_queues(self.redis, self.spec.name, list(self.spec.pools))
        self._dirty = True

    def _queue_publish(self, pipe: Any) -> None:
        """This host's part of the swarm: its lease (renewed), its slots and pools."""
        name, host = self.spec.name, self.host
        table = {wid: json.dumps(self._slot_view(slot)) for wid, slot in self.slots.items()}
        if table:
            pipe.hset(keys.host_slots(name, host), mapping=table)
        pipe.hset(keys.host(name, host), mapping=self._host_record())
        pipe.pexpire(keys.host(name, host), keys.HOST_LEASE_MS)
        pipe.hset(keys.host_pools(name, host), mapping=self.targets)

    def _host_record(self) -> dict[str, Any]:
        return {
            "state": "stopping" if self.stopping_since else "running",
            "pid": self.pid,
            "boot": f"{host_identity()}:{process_started(self.pid)}",
            "machine": socket.gethostname(),
            "started": self._started,
            "tick": time.time(),
            "spec": str(self.spec.source or ""),
        }

    def _budgets(self) -> list[tuple[str, float, str, str | None]]:
        """(ledger field, budget in USD, who, pool) for every budget in the spec."""
        found = []
        if self.spec.budget_usd is not None:
            found.append(("total|*|nano", self.spec.budget_usd, "the swarm", None))
        for name, pool in self.spec.pools.items():
            if pool.budget_usd is not None:
                found.append((f"pool|{name}|nano", pool.budget_usd, f"pool {name}", name))
        return found

    def _judge_budgets(self, budgets: list[tuple[str, float, str, str | None]],
                       spent: list[str | None]) -> None:
        """A budget used up pauses new work (once; workers also check at each start)."""
        for (_field, budget, who, pool), value in zip(budgets, spent):
            nano = int(value or 0)
            if nano < budget * 1e9 or who in self._budget_reached:
                continue
            self._budget_reached.add(who)
            reason = f"budget reached: {who} spent ${nano / 1e9:.6f} of ${budget:g}"
            self.redis.set(keys.paused(self.spec.name, pool), reason)
            self.events.record("budget_reached", who=who, spent_usd=f"{nano / 1e9:.6f}",
                               budget_usd=budget, level=logging.WARNING)

    def _slot_view(self, slot: Slot) -> dict[str, Any]:
        return {
            "pool": slot.pool,
            "slot": slot.name,
            "pid": slot.pid,
            "generation": slot.generation,
            "state": slot.state,
            "restarts": slot.restarts,
            "rss": slot.rss,
            "cpu": round(slot.cpu, 1),
            "last_exit": slot.last_exit,
            "expiry": self.spec.pools[slot.pool].heartbeat.expiry,
        }

    def _redis_unreachable(self, exc: Exception) -> None:
        if self._redis_ok:
            self._redis_ok = False
            log.warning("Redis unreachable: %s (hang checks paused)", exc)
        if self.embedded and not self.embedded.alive() and self.stopping_since is None:
            self._restart_redis()

    def _judge_heartbeats(self, live: list[Slot], values: list[str | None], now: float) -> None:
        """A live worker whose key is gone is hung, once it has had a full expiry since
        it was forked (boot grace) and since Redis was last unreachable."""
        for slot, value in zip(live, values):
            if slot.pid is None or slot.state in (HUNG, KILLING):
                continue
            self.beats[slot.worker_id] = value
            if value is not None:
                if not slot.seen_beat:
                    slot.seen_beat = True
                    if slot.state == STARTING:
                        slot.state = RUNNING
                    self._dirty = True
                continue
            expiry = self.spec.pools[slot.pool].heartbeat.expiry
            if now - max(slot.started_at, self._redis_ok_since) < expiry:
                continue
            if slot.state in (STOPPING, RETIRING):
                continue  # already leaving; the stop deadline handles it
            self._kill(slot, HUNG, f"hung: no heartbeat for {expiry:g}s", signal.SIGABRT)

    def _sample(self, now: float) -> None:
        self._last_sample = now
        for proc in self.running.values():
            if proc.meter is None:
                continue
            try:
                proc.slot.rss, proc.slot.cpu = proc.meter.sample()
            except psutil.Error:
                pass

    def _judge_memory(self, now: float) -> None:
        for proc in list(self.running.values()):
            slot = proc.slot
            limit = self.spec.pools[slot.pool].memory_limit
            if limit is None or slot.state in (HUNG, KILLING) or slot.rss <= limit:
                continue
            self._kill(
                slot, KILLING,
                f"memory: RSS {slot.rss} bytes over limit {limit}", signal.SIGTERM,
            )

    def _kill(self, slot: Slot, state: str, reason: str, polite: int) -> None:
        """First a polite signal (SIGABRT makes a hung worker dump its stack into its log;
        SIGCONT wakes a stopped one so it can), then SIGKILL after kill_grace."""
        assert slot.pid is not None
        self.events.record(
            "hang" if state == HUNG else "memory_kill", slot, pid=slot.pid, reason=reason,
            level=logging.WARNING,
        )
        slot.state = state
        slot.last_exit = reason
        slot.kill_at = time.monotonic() + self.spec.kill_grace
        proctree.signal_tree(slot.pid, polite)
        proctree.signal_tree(slot.pid, signal.SIGCONT)
        self._dirty = True

    def _escalate(self, now: float) -> None:
        for slot in self.slots.values():
            if slot.pid is not None and slot.kill_at is not None and now >= slot.kill_at:
                self.events.record("sigkill", slot, pid=slot.pid, level=logging.WARNING)
                proctree.signal_tree(slot.pid, signal.SIGKILL)
                slot.kill_at = now + 5.0  # in case it is stuck in the kernel: try again
        if self.stop_deadline is not None and now >= self.stop_deadline and self.running:
            self.stop_deadline = None
            for proc in self.running.values():
                self.events.record("sigkill", proc.slot, pid=proc.slot.pid,
                                   reason="stop grace over", level=logging.WARNING)
                proctree.signal_tree(proc.slot.pid or 0, signal.SIGKILL)

    # --- control: scale and down ---------------------------------------------------

    def _control(self, raw: str) -> None:
        try:
            command = json.loads(raw)
            kind = command["cmd"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed control command: %.200r", raw)
            return
        if kind == "down":
            self.stop(graceful=not command.get("now"), reason="swarm down")
        elif kind == "scale":
            self.scale(str(command.get("pool")), command.get("workers"))
        else:
            log.warning("ignored unknown control command %r", kind)

    def scale(self, pool: str, workers: Any) -> None:
        if pool not in self.spec.pools or not isinstance(workers, int) or workers < 0:
            log.warning("ignored scale of %r to %r", pool, workers)
            return
        before = self.targets[pool]
        self.targets[pool] = workers
        active = sorted(
            (s for s in self.slots.values() if s.pool == pool and s.state not in (RETIRING, STOPPED)),
            key=lambda s: s.index,
        )
        for slot in active[workers:]:
            self._retire(slot)
        taken = {s.index for s in self.slots.values() if s.pool == pool}
        index = 1
        while sum(1 for s in self.slots.values() if s.pool == pool and s.state not in (RETIRING, STOPPED)) < workers:
            while index in taken:
                index += 1
            self._add_slot(pool, index)
            taken.add(index)
        self.events.record("scale", pool=pool, before=before, after=workers)
        self._dirty = True

    def _retire(self, slot: Slot) -> None:
        if slot.pid is None:
            slot.state = STOPPED
            slot.next_start = None
            return
        slot.state = RETIRING
        slot.kill_at = time.monotonic() + self.spec.stop_grace + self.spec.kill_grace
        proctree.signal_tree(slot.pid, signal.SIGTERM)

    def _drop_slot(self, worker_id: str) -> None:
        del self.slots[worker_id]
        self.beats.pop(worker_id, None)
        try:
            self.redis.hdel(keys.host_slots(self.spec.name, self.host), worker_id)
            self.redis.delete(keys.worker(self.spec.name, worker_id))
        except Exception:  # noqa: BLE001
            pass

    # --- stopping ------------------------------------------------------------------

    def stop(self, graceful: bool, reason: str) -> None:
        now = time.monotonic()
        if self.stopping_since is None:
            self.stopping_since = now
            self.events.record("swarm_stop", reason=reason, graceful=graceful)
            for slot in self.slots.values():
                slot.next_start = None
                if slot.pid is None:
                    slot.state = STOPPED if slot.state != FATAL else FATAL
                elif slot.state not in (HUNG, KILLING):
                    slot.state = STOPPING
                    proctree.signal_tree(slot.pid, signal.SIGTERM)
            self.stop_deadline = now + self.spec.stop_grace + self.spec.kill_grace
            self._dirty = True
        if not graceful:
            self.stop_deadline = now

    def _finish(self) -> None:
        """Whatever happened, leave nothing running."""
        for pid in list(self.running):
            proctree.signal_tree(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.running and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.01)
        self.events.record("swarm_stopped")
        try:
            pipe = self.redis.pipeline(transaction=False)
            self.events.flush_into(pipe)
            name = self.spec.name
            k, a = scripts.leave_args(name, self.host, time.time())
            pipe.eval(scripts.LEAVE, len(k), *k, *a)
            for slot in self.slots.values():
                pipe.delete(keys.worker(name, slot.worker_id))
            pipe.execute()
        except Exception:  # noqa: BLE001
            pass
        self.redis.close()
        if self.embedded:
            self.embedded.stop()
        self.state.clear_runtime()
        if not self._ready_sent and self.on_ready:
            self._ready_sent = True
            self.on_ready("the swarm stopped before all workers were up")

    # --- Redis ---------------------------------------------------------------------

    def _register(self) -> None:
        """Make this host part of the swarm (again, after Redis forgot it)."""
        name, host = self.spec.name, self.host
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(keys.REGISTRY, name)
        pipe.sadd(keys.hosts(name), host)
        pipe.hset(keys.host(name, host), mapping=self._host_record())
        pipe.pexpire(keys.host(name, host), keys.HOST_LEASE_MS)
        pipe.delete(keys.host_slots(name, host), keys.host_pools(name, host))
        pipe.hset(keys.pools(name), mapping={p: pool.workers for p, pool in self.spec.pools.items()})
        # a pause for a budget is re-judged against this spec's budgets; a spend-limit
        # pause stays until `swarm resume`
        for pool in [None, *self.spec.pools]:
            pipe.eval("local v = redis.call('GET', KEYS[1]) if v and string.sub(v, 1, 15) == "
                      "'budget reached:' then redis.call('DEL', KEYS[1]) end return 0", 1,
                      keys.paused(name, pool))
        pipe.hset(keys.meta(name), mapping={
            "state": "running",
            "default_pool": str(self.spec.default_pool),
            "reference_model": self.reference_model or "",
            "price_source": price_source(sorted(self.spec.prices)),
            "redis": "embedded" if self.embedded else "external",
        })
        pipe.execute()

    def _redis_died(self, status: int) -> None:
        assert self.embedded is not None and self.embedded.process is not None
        self.embedded.process.returncode = status
        if self.stopping_since is not None:
            return
        self.events.record(
            "redis_exit", reason=proctree.describe_status(status), level=logging.ERROR
        )
        self._restart_redis()

    def _restart_redis(self) -> None:
        assert self.embedded is not None
        try:
            self.embedded.start()
        except Exception as exc:  # noqa: BLE001
            log.error("embedded Redis did not come back: %s", exc)
            return
        self._redis_ok_since = time.monotonic()
        self.events.record("redis_restart", pid=self.embedded.pid)

    def _maybe_ready(self) -> None:
        if self._ready_sent or self.on_ready is None:
            return
        pending = [s for s in self.slots.values() if s.state != FATAL and not s.seen_beat]
        if pending:
            return
        self._ready_sent = True
        fatal = [s for s in self.slots.values() if s.state == FATAL]
        problem = None
        if fatal:
            problem = f"{len(fatal)} worker(s) FATAL: " + "; ".join(
                f"{s.worker_id}: {s.last_exit}" for s in fatal[:3]
            )
        self.on_ready(problem)


class HostTaken(Exception):
    """Another live supervisor runs this swarm under the same host name."""


def host_identity() -> str:
    """This machine's boot and pid namespace: where a pid means the same process."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
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


__all__ = ["Supervisor", "RUNNING", "RESTARTING", "STARTING"]
