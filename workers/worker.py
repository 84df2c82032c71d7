"""The worker process: one asyncio loop that heartbeats and runs tasks.

The heartbeat is a coroutine on the same loop as the work, so a worker whose loop is
blocked (a synchronous call that never returns, a deadlock) stops beating even though
its process is alive, and the supervisor sees it as hung.
"""

from __future__ import annotations

import asyncio
import faulthandler
import importlib
import inspect
import logging
import os
import signal
import sys
from datetime import datetime, UTC
from typing import Any, cast

from workers import keys
from workers.api_client import make_agent
from workers.config import EXIT_BOOT_FAILED, EXIT_OK, EXIT_ORPHANED, WorkerConfig
from workers.jail import Jail
from workers.librarian import Librarian
from workers.proc import isolate_imports
from workers.report import Report
from workers.seed_intake import SeedIntake
from workers.states import WorkerState
from workers.tasks import TaskRunner
from workers.tools import Toolbox, ToolSettings

log = logging.getLogger("swarm.worker")


def run(cfg: WorkerConfig) -> int:
    """Entry point in a fresh worker process; returns the exit code."""
    _setup_logging(cfg)
    faulthandler.enable()  # SIGABRT (sent for a hang) dumps every thread's stack first
    os.environ.update(cfg.env)
    isolate_imports(os.getcwd(), cfg.workdir)
    _more_files()
    try:
        os.chdir(cfg.workdir)
    except OSError as exc:
        log.error("cannot enter workdir %s: %s", cfg.workdir, exc)
        return EXIT_BOOT_FAILED
    return asyncio.run(Worker(cfg).main())


def _more_files() -> None:
    """Raise the soft limit of open files to the hard one: the tools hold a descriptor
    per folder of each path they walk, and a task's connections need theirs."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError):
        pass


def _setup_logging(cfg: WorkerConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s {cfg.swarm}/{cfg.slot or cfg.worker_id}"
            f"#{cfg.generation} %(message)s"
        )
    )
    # Forked from the supervisor: drop the handlers we inherited (its log file).
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            logger.handlers.clear()
            logger.propagate = True
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # one line per HTTP request would cost more than the task's own work; the SDK's
    # "Retrying request" lines (logger 'anthropic') stay
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Worker:
    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        # every task in flight may want a connection at once (redis-py 8's pools stop
        # at 100 and then raise): room for all of them, the heartbeat and the tools
        # (a librarian's questions are not bounded by its concurrency: each one waiting
        # for an identical one's answer polls too)
        # (a batch pool's thousands of tasks wait their turn for one of 256 instead)
        room = 1024 if cfg.role == "librarian" else 2 * cfg.concurrency + 32
        timeout = max(1.0, cfg.heartbeat_interval)
        self.redis = (cfg.redis.aio_bounded(256, socket_timeout=timeout) if room > 1024
                      else cfg.redis.aio(socket_timeout=timeout, max_connections=room))
        # the beat has its own connections: never queued behind the tasks'
        self.beat_redis = cfg.redis.aio(socket_timeout=timeout, max_connections=4)
        self.report = Report(cfg, self.redis)
        self.runner: TaskRunner | None = None
        self.jail: Jail | None = None
        self._status_key = keys.worker(cfg.swarm, cfg.worker_id)
        self._beat_key = keys.heartbeat(cfg.worker_id)
        self._lease_key = keys.lease(cfg.swarm, keys.consumer(cfg.worker_id, cfg.generation))
        self._beat_ms = max(1, int(cfg.heartbeat_expiry * 1000))
        self._redis_down_logged = False

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        stopping = self.report.stopping
        try:
            runner = await self._boot()
            if runner is None:
                return EXIT_BOOT_FAILED
            beating = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
            librarian = self._librarian(runner)
            consuming = asyncio.create_task(
                librarian.serve() if librarian else runner.consume(), name="consume")
            desk = getattr(getattr(runner.agent, "caller", None), "desk", None)
            collecting = asyncio.create_task(  # a batch pool's: its batches' results
                desk.collect(stopping) if desk else stopping.wait(), name="batches")
            intake = SeedIntake(self.cfg, self.redis, stopping)
            listening = asyncio.create_task(
                intake.listen() if self.cfg.seed_listener else stopping.wait(),
                name="seed intake")
            await stopping.wait()
            self.report.state = WorkerState.STOPPING
            await self._beat()
            consuming.cancel()
            listening.cancel()
            await runner.drain(self.cfg.stop_grace)
            if desk:
                await desk.close(self.cfg.stop_grace)
            collecting.cancel()
            if librarian and librarian.jobs:
                await asyncio.wait(set(librarian.jobs), timeout=self.cfg.stop_grace)
            beating.cancel()
            if hasattr(runner.agent, "stop"):
                await runner.agent.stop()
            await self._say_goodbye()
            return EXIT_OK
        finally:
            await self.redis.aclose()
            await self.beat_redis.aclose()

    async def _boot(self) -> TaskRunner | None:
        """Reach Redis, run the on_start hook, build the agent, take the lease; the task
        runner, or None if the worker cannot start."""
        try:
            await self.redis.ping()
        except Exception as exc:  # noqa: BLE001 - any failure to reach Redis stops boot
            log.error("cannot reach Redis at %s: %s", self.cfg.redis, exc)
            return None
        if self.cfg.on_start:
            try:
                result = _import_string(self.cfg.on_start)(self)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_start hook %s failed", self.cfg.on_start)
                return None
        agent = make_agent(self.cfg, self.redis)
        if hasattr(agent, "start"):  # Claude Code's: its proxy and sandbox
            try:
                await agent.start()
            except Exception:
                log.exception("cannot start the %s runtime", self.cfg.runtime)
                return None
        runner = TaskRunner(self.cfg, self.redis, self.report, agent, self.toolbox)
        await runner.ensure_group()
        self.report.state = WorkerState.IDLE
        if not await self._beat():  # no delivery is read before our lease exists
            log.error("cannot take this worker's lease in Redis")
            return None
        log.info("started pid=%d pool=%s", os.getpid(), self.cfg.pool)
        self.runner = runner
        return runner

    def _librarian(self, runner: TaskRunner) -> Librarian | None:
        """In a librarian pool: the service that answers archive questions (the pool's
        task queue is then not read)."""
        if self.cfg.role != "librarian":
            return None
        agent = runner.agent
        caller = getattr(agent, "caller", None)
        return Librarian(self.cfg, self.redis, caller, getattr(agent, "missing_key", None),
                         self.report.stopping)

    def toolbox(self) -> Toolbox:
        """A task's tools; the workdir is opened once for every task of this process."""
        if self.jail is None:
            self.jail = Jail(self.cfg.workdir, self.cfg.fence)
        return Toolbox(self.jail, ToolSettings.of(self.cfg.tools))

    def request_stop(self, sig: int | None = None) -> None:
        if not self.report.stopping.is_set():
            name = signal.Signals(sig).name if sig else "request"
            log.info("stopping (%s): finishing current work", name)
            self.report.stopping.set()

    # --- heartbeat -----------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.heartbeat_interval)
            if self.cfg.parent_pid is not None and os.getppid() != self.cfg.parent_pid:
                log.error("supervisor (pid %d) is gone; exiting", self.cfg.parent_pid)
                os._exit(EXIT_ORPHANED)
            await self._beat()

    async def _beat(self) -> bool:
        """The lease, the seed's heartbeat (timestamps that expire) and this worker's own
        report, in one round trip; False if Redis did not take them."""
        now = datetime.now(UTC).isoformat()
        pipe = self.beat_redis.pipeline(transaction=False)
        pipe.set(self._lease_key, now, px=self._beat_ms)
        pipe.set(self._beat_key, now, px=self._beat_ms)
        pipe.hset(self._status_key, mapping=cast(dict[Any, Any], self.report.fields(now)))
        pipe.mget(keys.paused(self.cfg.swarm), keys.paused(self.cfg.swarm, self.cfg.pool))
        busy = list(self.report.busy)
        if busy:
            pipe.mget([keys.cancel(self.cfg.swarm, t) for t in busy])
        try:
            replies = await pipe.execute()
            swarm_wide, pool_only = replies[3]
            if busy and self.runner is not None:
                self.runner.cancel([t for t, flag in zip(busy, replies[4]) if flag])
            self.report.paused = swarm_wide or pool_only
            if self._redis_down_logged:
                log.info("Redis is back")
                self._redis_down_logged = False
            return True
        except Exception as exc:  # noqa: BLE001 - Redis down: keep working, say so once
            if not self._redis_down_logged:
                log.warning("heartbeat failed, Redis unreachable: %s", exc)
                self._redis_down_logged = True
            return False

    async def _say_goodbye(self) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(self._beat_key, self._lease_key)
            pipe.hset(self._status_key, "state", str(WorkerState.STOPPED))
            await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - leaving anyway; the keys expire by themselves
            log.info("could not say goodbye in Redis: %s", exc)
        log.info("stopped")


def _import_string(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)
