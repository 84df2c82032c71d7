"""Forking a worker. The supervisor has already imported the heavy modules (the SDK,
httpx, pydantic), so a fork starts a worker in milliseconds and shares those pages."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any

from decimal import Decimal

from launcher.slot import Slot
from launcher.spec import Pool, SwarmSpec
from workers.config import SEED_LISTENERS, Delegate, WorkerConfig
from workers.pricing import PriceBook, Rates, Usage
from workers.jail import Fence
from workers.proc import die_with_parent
from workers.redis_target import RedisTarget

_RESET = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT,
          signal.SIGUSR1, signal.SIGUSR2)


def config_for(spec: SwarmSpec, slot: Slot, host: str, redis: RedisTarget, parent_pid: int,
               reference_model: str | None, fence: Fence) -> WorkerConfig:
    """What the slot's next worker process is told: its identity and its pool's
    settings from the spec."""
    pool = spec.pools[slot.pool]
    return WorkerConfig(
        swarm=spec.name, worker_id=slot.worker_id, host=host, slot=slot.name,
        pool=slot.pool, generation=slot.generation + 1, redis=redis, model=pool.model,
        concurrency=pool.concurrency,
        heartbeat_interval=float(pool.heartbeat.interval or pool.heartbeat.expiry / 3),
        heartbeat_expiry=pool.heartbeat.expiry, task_timeout=pool.task_timeout,
        stop_grace=spec.stop_grace, workdir=str(pool.workdir), env=dict(pool.env),
        on_start=pool.on_start, parent_pid=parent_pid, default_pool=str(spec.default_pool),
        seed_listener=spec.seed_protocol and slot.index <= SEED_LISTENERS,
        pools=tuple(spec.pools), max_attempts=pool.max_attempts, max_turns=pool.max_turns,
        max_tokens=pool.max_tokens, max_retries=pool.max_retries,
        cache_ttl="1h" if pool.role == "librarian" else pool.cache_ttl,
        tools=pool.tools.model_dump(mode="json"), fence=fence,
        prices={model: rates.rates() for model, rates in spec.prices.items()},
        reference_model=reference_model, max_cost_usd=pool.max_cost_usd,
        budget_usd=spec.budget_usd, pool_budget_usd=pool.budget_usd,
        rate_limit=(spec.rate_limits[pool.model].model_dump()
                    if pool.model in spec.rate_limits else {}),
        role=pool.role, escalate_to=pool.escalate_to, archive=tuple(pool.archive),
        librarians=tuple(n for n, p in spec.pools.items() if p.role == "librarian"),
        delegates={name: delegate(spec, name) for name in pool.delegates_to},
        run_defaults=run_defaults(pool),
        batch=pool.batch.model_dump() if pool.batch is not None else None,
        runtime=pool.runtime,
        claude_code=claude_code(spec, pool, slot) if pool.runtime == "claude-code" else {},
    )


# Claude Code's tools for each of the pool's tool switches
CLAUDE_CODE_TOOLS = {"read": ("Read",), "write": ("Write",), "edit": ("Edit", "MultiEdit"),
                     "list": ("Glob", "LS"), "grep": ("Grep",),
                     "shell": ("Bash", "BashOutput", "KillShell")}
WEB_TOOLS = ("WebFetch", "WebSearch")


def claude_code(spec: SwarmSpec, pool: Pool, slot: Slot) -> dict[str, Any]:
    """What a Claude Code worker is told: its tools (the spec's list, else the pool's
    switches mapped to Claude Code's names), settings sources, and its folder."""
    chosen = pool.claude_code
    if chosen.tools is not None:
        tools = [t for t in chosen.tools if chosen.web or t not in WEB_TOOLS]
    else:
        switches = pool.tools.model_dump()
        tools = [t for name, names in CLAUDE_CODE_TOOLS.items() if switches.get(name)
                 for t in names]
    if chosen.web:
        tools += [t for t in WEB_TOOLS if t not in tools]
    return {"tools": tools, "settings": list(chosen.settings),
            "home": str(spec.state_dir / spec.name / "claude" / slot.name)}


def delegate(spec: SwarmSpec, name: str) -> Delegate:
    """A pool as a lead sees it: its model and what one of its tasks can cost at most:
    its ``max_cost_usd``, else ``max_turns`` answers of ``max_tokens`` each."""
    pool = spec.pools[name]
    prices = PriceBook({m: Rates(**{k: Decimal(str(v)) for k, v in r.rates().items()})
                        for m, r in spec.prices.items()})
    if pool.max_cost_usd is not None:
        worst = int(Decimal(str(pool.max_cost_usd)) * 10**9)
    else:
        worst = prices.nano(pool.model, Usage(output=pool.max_turns * pool.max_tokens)) or 0
    return Delegate(pool.model, worst, prices.knows(pool.model))


def run_defaults(pool: Pool) -> dict[str, int]:
    """A lead pool's limits per run, as the run's record holds them."""
    if pool.role != "lead" or pool.run is None:
        return {}
    budget = pool.run.budget_usd
    return {"budget_nano": 0 if budget is None else int(Decimal(str(budget)) * 10**9),
            "max_tasks": pool.run.max_tasks, "max_in_flight": pool.run.max_in_flight}


def fork_worker(cfg: WorkerConfig, close_in_child: list[int]) -> tuple[int, int]:
    """Start a worker; returns (pid, fd to read its stdout and stderr from)."""
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child never returns from here
        code = 1
        try:
            os.setsid()  # its own process group: the whole tree can be signalled at once
            die_with_parent(signal.SIGKILL, parent)
            signal.set_wakeup_fd(-1)
            for sig in _RESET:
                signal.signal(sig, signal.SIG_DFL)
            # a write to a peer that went away is an error to handle, never a death
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
            for fd in (read_fd, *close_in_child):
                _close(fd)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(write_fd, 1)
            os.dup2(write_fd, 2)
            # the process's own streams, not a live view's proxies (which would draw the
            # supervisor's table into the worker's log)
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            _close(null)
            _close(write_fd)
            from workers.worker import run

            code = run(cfg)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - report anything, then leave
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    return pid, read_fd


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
