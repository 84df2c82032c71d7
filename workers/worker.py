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
from datetime import datetime, timezone
from typing import Any

from workers import keys
from workers.config import EXIT_BOOT_FAILED, EXIT_OK, EXIT_ORPHANED, WorkerConfig
from workers.proc import isolate_imports

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
            f"%(asctime)s %(levelname)s {cfg.slot or cfg.worker_id}#{cfg.generation} "
            "%(message)s"
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
        self.state = "starting"
        self.current_task = ""
        self.done = 0
        self.failed = 0
        self.stopping = asyncio.Event()
        self.paused: str | None = None  # the swarm-wide pause reason, read with each beat
        self.busy: dict[str, None] = {}  # task ids being worked on, in start order
        self.agent: Any = None
        self.runner: Any = None
        self._status_key = keys.worker(cfg.swarm, cfg.worker_id)
        self._beat_key = keys.heartbeat(cfg.worker_id)
        self._lease_key = keys.lease(cfg.swarm, keys.consumer(cfg.worker_id, cfg.generation))
        self._beat_ms = max(1, int(cfg.heartbeat_expiry * 1000))
        self._redis_down_logged = False
        self.redis: Any = None
        self.jail: Any = None

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        self.redis = self.cfg.redis.aio(socket_timeout=max(1.0, self.cfg.heartbeat_interval))
        try:
            if not await self._boot():
                return EXIT_BOOT_FAILED
            beating = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
            consuming = asyncio.create_task(self.runner.consume(), name="consume")
            listening = asyncio.create_task(
                self.runner.listen_seed() if self.cfg.seed_listener else self.stopping.wait(),
                name="seed intake")
            await self.stopping.wait()
            self.state = "stopping"
            await self._beat()
            consuming.cancel()
            listening.cancel()
            await self.runner.drain(self.cfg.stop_grace)
            beating.cancel()
            await self._say_goodbye()
            return EXIT_OK
        finally:
            await self.redis.aclose()

    async def _boot(self) -> bool:
        try:
            await self.redis.ping()
        except Exception as exc:  # noqa: BLE001 - any failure to reach Redis stops boot
            log.error("cannot reach Redis at %s: %s", self.cfg.redis, exc)
            return False
        if self.cfg.on_start:
            try:
                result = _import_string(self.cfg.on_start)(self)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_start hook %s failed", self.cfg.on_start)
                return False
        self.agent = _make_agent(self.cfg, self.redis)
        from workers.tasks import TaskRunner

        self.runner = TaskRunner(self)
        await self.runner.ensure_group()
        self.state = "idle"
        if not await self._beat():  # no delivery is read before our lease exists
            log.error("cannot take this worker's lease in Redis")
            return False
        log.info("started pid=%d pool=%s", os.getpid(), self.cfg.pool)
        return True

    # --- what the task runner tells us ---------------------------------------------

    def toolbox(self) -> Any:
        from workers.tools import Toolbox, ToolSettings

        if self.jail is None:  # one open workdir for every task of this process
            from workers.jail import Jail

            self.jail = Jail(self.cfg.workdir, self.cfg.fence)
        return Toolbox(self.jail, ToolSettings.of(self.cfg.tools))

    def task_started(self, task_id: str) -> None:
        self.busy[task_id] = None
        self.state = "busy"
        self.current_task = next(iter(self.busy))

    def task_ended(self, task_id: str) -> None:
        self.busy.pop(task_id, None)
        self.current_task = next(iter(self.busy), "")
        if not self.busy and self.state == "busy":
            self.state = "idle"

    def count(self, done: bool) -> None:
        if done:
            self.done += 1
        else:
            self.failed += 1

    async def pause(self, reason: str, pool: str | None = None) -> None:
        """Stop the whole swarm (or one pool) from taking new work; every worker reads the
        flag with its next beat. Tasks in flight finish."""
        self.paused = reason
        log.error("pausing %s: %s", f"pool {pool}" if pool else "the swarm", reason)
        await self.redis.set(keys.paused(self.cfg.swarm, pool), reason)

    def request_stop(self, sig: int | None = None) -> None:
        if not self.stopping.is_set():
            name = signal.Signals(sig).name if sig else "request"
            log.info("stopping (%s): finishing current work", name)
            self.stopping.set()

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
        now = datetime.now(timezone.utc).isoformat()
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self._lease_key, now, px=self._beat_ms)
        pipe.set(self._beat_key, now, px=self._beat_ms)
        pipe.hset(self._status_key, mapping=self._report(now))
        pipe.mget(keys.paused(self.cfg.swarm), keys.paused(self.cfg.swarm, self.cfg.pool))
        try:
            swarm_wide, pool_only = (await pipe.execute())[-1]
            self.paused = swarm_wide or pool_only
            if self._redis_down_logged:
                log.info("Redis is back")
                self._redis_down_logged = False
            return True
        except Exception as exc:  # noqa: BLE001 - Redis down: keep working, say so once
            if not self._redis_down_logged:
                log.warning("heartbeat failed, Redis unreachable: %s", exc)
                self._redis_down_logged = True
            return False

    def _report(self, now: str) -> dict[str, str | int]:
        return {
            "state": self.state,
            "task": self.current_task,
            "in_flight": len(self.busy),
            "done": self.done,
            "failed": self.failed,
            "pid": os.getpid(),
            "generation": self.cfg.generation,
            "beat": now,
        }

    async def _say_goodbye(self) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(self._beat_key, self._lease_key)
            pipe.hset(self._status_key, "state", "stopped")
            await pipe.execute()
        except Exception:  # noqa: BLE001 - leaving anyway; the key expires by itself
            pass
        log.info("stopped")


def _make_agent(cfg: WorkerConfig, redis: Any) -> Any:
    """One SDK client per process, built after fork and reused by every task."""
    from decimal import Decimal

    from workers.agent import Agent
    from workers.ledger import Ledger
    from workers.pricing import PriceBook, Rates

    if not (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")):
        reason = "ANTHROPIC_API_KEY is not set: set it in the environment of `swarm up`"
        log.error(reason)
        return Agent(None, cfg.model, cfg.max_turns, cfg.max_tokens, missing_key=reason)
    import anthropic

    prices = PriceBook({model: Rates(**{k: Decimal(str(v)) for k, v in rates.items()})
                        for model, rates in cfg.prices.items()})
    if not prices.knows(cfg.model):
        log.warning("no price for model %s: its tokens are counted, its cost is not",
                    cfg.model)
    ledger = Ledger(redis, cfg.swarm, cfg.worker_id, keys.consumer(cfg.worker_id,
                    cfg.generation), cfg.pool, cfg.model, prices, cfg.reference_model,
                    rpm=cfg.rate_limit.get("rpm"), tpm=cfg.rate_limit.get("tpm"))
    client = anthropic.AsyncAnthropic(max_retries=cfg.max_retries,
                                      http_client=_http_client(cfg, ledger))
    limit = None if cfg.max_cost_usd is None else int(Decimal(str(cfg.max_cost_usd)) * 10**9)
    return Agent(client, cfg.model, cfg.max_turns, cfg.max_tokens, ledger=ledger,
                 max_cost_nano=limit)


def _http_client(cfg: WorkerConfig, ledger: Any) -> Any:
    """The SDK's own client class, with room to keep every task's connection alive, and
    a hook that turns any 429 into a swarm-wide cool-down (the SDK still retries it)."""
    import anthropic
    import httpx2

    async def on_response(response: Any) -> None:
        if response.status_code == 429:
            await ledger.cool_down(_retry_after(response.headers))

    return anthropic.DefaultAsyncHttpxClient(
        limits=httpx2.Limits(max_connections=max(1000, cfg.concurrency * 2),
                             max_keepalive_connections=max(100, cfg.concurrency)),
        event_hooks={"response": [on_response]},
    )


def _retry_after(headers: Any) -> float:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return max(0.05, min(60.0, float(headers.get(name)) * scale))
        except (TypeError, ValueError):
            continue
    return 1.0


def _import_string(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)
