"""What a worker process is told when it starts. Built by the launcher from the spec,
handed over across fork, so the worker never reads the spec itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workers.jail import Fence
from workers.redis_target import RedisTarget

# Exit codes a worker uses to say why it stopped (anything else is a crash).
EXIT_OK = 0
EXIT_BOOT_FAILED = 3  # on_start hook or Redis login failed before the first beat
EXIT_ORPHANED = 4  # the supervisor vanished

# slots 1..SEED_LISTENERS of each pool hear channel:tasks: two, so that one restarting
# does not leave the pool deaf (workers/tasks.py: TaskRunner.listen_seed)
SEED_LISTENERS = 2


@dataclass(frozen=True)
class WorkerConfig:
    swarm: str
    worker_id: str  # <swarm>/<host>/<slot>: unique on the Redis
    pool: str
    generation: int
    redis: RedisTarget
    host: str = ""
    slot: str = ""  # <pool>-<n>: the worker's name on its host (its log file's)
    model: str = ""
    concurrency: int = 1
    heartbeat_interval: float = 5.0
    heartbeat_expiry: float = 15.0
    task_timeout: float = 600.0
    stop_grace: float = 30.0
    workdir: str = "."
    env: dict[str, str] = field(default_factory=dict)
    on_start: str | None = None
    parent_pid: int | None = None
    default_pool: str = ""  # where seed-style tasks announced on channel:tasks go
    seed_listener: bool = True  # hears channel:tasks (the supervisor picks a few per pool)
    pools: tuple[str, ...] = ()  # every pool of the swarm, to route a task's 'pool'
    max_attempts: int = 3
    max_turns: int = 20
    max_tokens: int = 4096
    cache_ttl: str = "5m"  # of the shared prefix's cache breakpoint: "5m" or "1h"
    max_retries: int = 4
    tools: dict[str, object] = field(default_factory=dict)  # workers.tools.ToolSettings
    fence: Fence = field(default_factory=Fence)  # swarm's own places, out of the tools' reach
    prices: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> rates
    reference_model: str | None = None
    max_cost_usd: float | None = None
    budget_usd: float | None = None  # the swarm's
    pool_budget_usd: float | None = None
    rate_limit: dict[str, int | None] = field(default_factory=dict)  # rpm, tpm of our model
    role: str = "worker"  # or "lead": runs goals (workers/lead.py); or "librarian"
    librarians: tuple[str, ...] = ()  # the swarm's librarian pools (ask_librarian)
    archive: tuple[str, ...] = ()  # a librarian's: globs of its archive, under its workdir
    escalate_to: str | None = None  # where a task handed back outside a run goes
    # a lead's: the pools it may hand tasks to, and their worst case per task
    delegates: dict[str, Delegate] = field(default_factory=dict)
    run_defaults: dict[str, int] = field(default_factory=dict)  # budget_nano, max_tasks...
    # "claude-code": tasks run in Claude Code (workers/claude_code.py), with these
    # settings: tools (its tool names), settings (sources), home (this worker's folder
    # for its config and temp files, under the state folder)
    runtime: str = "builtin"
    claude_code: dict[str, Any] = field(default_factory=dict)
    # a batch pool's: window, max_requests, poll, poll_max, retries (None: not batched)
    batch: dict[str, float] | None = None


@dataclass(frozen=True)
class Delegate:
    """A pool a lead may hand tasks to, as the lead needs to know it."""

    model: str
    worst_nano: int  # what one task can cost at most (its cap when a run hands it out)
    priced: bool = True  # the model has a price (else no budget can be kept)
