"""The swarm spec's model: every field, its type, bounds and defaults, checked by
pydantic. Reading a YAML file into it, with one-line errors that name the file, line
and field, is launcher/spec.py's job."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from launcher.spec_types import Batch, ClaudeCode, Count, Duration, Size, _Model

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]{0,62}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
IMPORT_STRING = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class Heartbeat(_Model):
    expiry: Duration = Field(15.0, gt=0, description="a worker silent this long is hung")
    interval: Duration | None = Field(
        None, gt=0, description="how often a worker beats; default a third of expiry"
    )

    @model_validator(mode="after")
    def _interval_inside_expiry(self) -> Heartbeat:
        if self.interval is None:
            self.interval = self.expiry / 3
        elif self.interval > self.expiry / 2:
            raise ValueError(
                f"interval ({self.interval:g}s) must be at most half of expiry "
                f"({self.expiry:g}s), or a busy worker will be taken for a hung one"
            )
        return self


class Backoff(_Model):
    initial: Duration = Field(0.1, gt=0)
    max: Duration = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Backoff:
        if self.max < self.initial:
            raise ValueError(f"max ({self.max:g}s) must be >= initial ({self.initial:g}s)")
        return self


class Restart(_Model):
    backoff: Backoff = Field(default_factory=Backoff)
    max_restarts: Count = Field(5, ge=0, description="give up after more restarts than this ...")
    window: Duration = Field(60.0, gt=0, description="... within this window")
    reset_after: Duration = Field(
        30.0, gt=0, description="a worker that ran this long resets its backoff"
    )


class Tools(_Model):
    """The agent's tools, each confined to the pool's workdir (swarm's own files in it
    are hidden or read-only)."""

    read: bool = True
    write: bool = True
    edit: bool = True
    list: bool = True
    grep: bool = True
    shell: bool = Field(False, description="run shell commands, in a sandbox by default")
    hand_back: bool = Field(True, description="the worker may hand a task back when it "
                            "needs deeper reasoning (to a run's lead, or to escalate_to)")
    findings: bool = Field(True, description="search the swarm's findings and read them")
    ask_librarian: bool = Field(True, description="ask the swarm's librarian pool about "
                                "its archive (where it has one)")
    librarian_timeout: Duration = Field(60.0, gt=0, description="how long a question to "
                                        "the librarian may take; then the worker goes on")
    shell_timeout: Duration = Field(30.0, gt=0)
    shell_sandbox: bool = Field(
        True, description="false: commands run unsandboxed, as the worker's user, with "
        "everything that user can reach (swarm's secrets included)")
    shell_network: bool = Field(False, description="the sandboxed shell may use the network")
    # (tuples: the field 'list' above hides the builtin in this class's annotations)
    shell_env: tuple[str, ...] = Field(
        (), description="names of environment variables the shell is given")
    shell_paths: tuple[Path, ...] = Field(
        (), description="more folders the sandbox shows, read-only")
    max_file_bytes: Size = Field(4_000_000, ge=1, description="largest file edited or written")
    tool_timeout: Duration = Field(30.0, gt=0, description="a file tool's time, at most")

    @field_validator("shell_env")
    @classmethod
    def _no_secrets(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        from workers.shell import SECRET_ENV

        for name in names:
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if name in SECRET_ENV:
                raise ValueError(f"{name} is a secret of swarm's; it never reaches the shell")
        return names


class PriceOverride(_Model):
    """USD per million tokens; cache rates default to Anthropic's multiples of input."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_write: float | None = Field(None, ge=0, description="5-minute writes; 1.25 x input")
    cache_write_1h: float | None = Field(None, ge=0, description="1-hour writes; 2 x input")
    cache_read: float | None = Field(None, ge=0, description="default 0.1 x input")

    def rates(self) -> dict[str, float]:
        def given(value: float | None, times_input: float) -> float:
            return self.input * times_input if value is None else value

        return {"input": self.input, "output": self.output,
                "cache_write": given(self.cache_write, 1.25),
                "cache_write_1h": given(self.cache_write_1h, 2),
                "cache_read": given(self.cache_read, 0.1)}


class RateLimit(_Model):
    rpm: Count | None = Field(None, ge=1, description="requests per minute, swarm-wide")
    tpm: Count | None = Field(None, ge=1, description="input+output tokens per minute")


class RunLimits(_Model):
    """A lead pool's limits for each run (`swarm run` can set its own)."""

    budget_usd: float | None = Field(
        2.0, gt=0, description="what a run may spend (its lead and its tasks); null: none")
    max_tasks: Count = Field(50, ge=1, le=100_000, description="tasks a run hands out")
    max_in_flight: Count = Field(10, ge=1, le=100_000, description="tasks running at once")


class Pool(_Model):
    model: str = Field(min_length=1, description="the Claude model id")
    role: Literal["worker", "lead", "librarian"] = Field(
        "worker", description="worker: runs tasks; lead: runs goals (`swarm run`), handing "
        "tasks to the pools in delegates_to; librarian: answers questions about its archive "
        "(query:archive:{uuid})")
    archive: list[str] = Field(
        default_factory=list, description="a librarian's: files or globs under its "
        "workdir, read at start and when they change")
    delegates_to: list[str] = Field(
        default_factory=list, description="a lead's: the worker pools it hands tasks to")
    escalate_to: str | None = Field(
        None, description="a worker pool's: where a task its worker handed back (needs "
        "deeper reasoning) runs again, when it is part of no run")
    run: RunLimits | None = Field(None, description="a lead's limits per run")
    workers: Count = Field(1, ge=0, le=4096, description="processes on each host (0: none "
                           "until `swarm scale`)")
    concurrency: Count = Field(1, ge=1, le=10_000, description="tasks in flight per worker")
    heartbeat: Heartbeat = Field(default_factory=Heartbeat)
    restart: Restart = Field(default_factory=Restart)
    memory_limit: Size | None = Field(None, gt=0, description="RSS of one worker's tree")
    task_timeout: Duration = Field(600.0, gt=0)
    workdir: Path = Path(".")
    env: dict[str, str] = Field(default_factory=dict)
    on_start: str | None = Field(
        None, description="'module:function' called in each worker once it has booted"
    )
    max_attempts: Count = Field(3, ge=1, le=100, description="runs of a task whose worker died")
    max_turns: Count = Field(20, ge=1, le=1000, description="API calls per task at most")
    max_tokens: Count = Field(4096, ge=1, le=1_000_000, description="per API call")
    max_retries: Count = Field(4, ge=0, le=20, description="SDK retries of 429/529/5xx")
    cache_ttl: Literal["5m", "1h"] = Field(
        "5m", description="how long the API caches the shared prefix (system prompt and "
        "context:active): 1h costs 2x to write (5m: 1.25x) and pays when tasks come in "
        "bursts more than 5 minutes apart")
    tools: Tools = Field(default_factory=Tools)
    budget_usd: float | None = Field(None, gt=0, description="no new task once this pool spent it")
    max_cost_usd: float | None = Field(None, gt=0, description="a task spending this fails")
    runtime: Literal["builtin", "claude-code"] = Field(
        "builtin", description="what runs a task: swarm's own agent loop, or Claude Code "
        "(pip install 'swarm[claude-code]'), metered and sandboxed by its worker")
    claude_code: ClaudeCode = Field(default_factory=ClaudeCode)
    batch: Batch | None = Field(None, description="true (or settings): each turn's request "
                                "goes through the Message Batches API at half price; "
                                "task_timeout then defaults to 24h, concurrency to 1000")

    @field_validator("batch", mode="before")
    @classmethod
    def _batch_switch(cls, value: Any) -> Any:
        return {} if value is True else None if value is False else value

    @model_validator(mode="after")
    def _batch_defaults(self) -> Pool:
        if self.batch is not None:
            if "task_timeout" not in self.model_fields_set:
                self.task_timeout = 86_400.0
            if "concurrency" not in self.model_fields_set:
                self.concurrency = 1000
        return self

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens_the_model_can_produce(cls, value: int, info: ValidationInfo) -> int:
        from workers.pricing import context_window

        model = info.data.get("model")
        window = context_window(model) if isinstance(model, str) else None
        if window is not None and value >= window:
            raise ValueError(f"{value} is more than {model} can produce: its context "
                             f"window is {window:,} tokens")
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_as_strings(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v if isinstance(v, str) else yaml_scalar(v) for k, v in value.items()}
        return value

    @field_validator("on_start")
    @classmethod
    def _import_string(cls, value: str | None) -> str | None:
        if value is not None and not IMPORT_STRING.match(value):
            raise ValueError(f"must look like 'package.module:function', not {value!r}")
        return value


class Logs(_Model):
    dir: Path = Path("logs")
    max_bytes: Size = Field(10_000_000, ge=1024)
    backups: Count = Field(3, ge=0, le=100)


class SwarmSpec(_Model):
    name: str = Field("swarm", description="names the swarm in Redis and in .swarm/")
    redis: str = Field(
        "embedded", description="'embedded' for a private server, or a redis:// URL"
    )
    state_dir: Path = Field(Path(".swarm"), description="pid file, embedded Redis, sockets")
    logs: Logs = Field(default_factory=Logs)
    stop_grace: Duration = Field(
        30.0, ge=0, description="on shutdown, how long workers may finish their tasks"
    )
    kill_grace: Duration = Field(
        2.0, ge=0, description="after the polite signal, how long before SIGKILL"
    )
    pools: dict[str, Pool] = Field(min_length=1)
    default_pool: str | None = Field(
        None, description="where tasks without a pool go; default the first pool"
    )
    budget_usd: float | None = Field(None, gt=0, description="no new task once the swarm spent it")
    reference_model: str | None = Field(
        None, description="`swarm cost` compares with this model; default the newest Sonnet"
    )
    prices: dict[str, PriceOverride] = Field(
        default_factory=dict, description="per-model price overrides, USD per million tokens"
    )
    rate_limits: dict[str, RateLimit] = Field(
        default_factory=dict, description="per-model limits shared by every worker"
    )
    host: str | None = Field(
        None, description="this host's name in the swarm; default $SWARM_HOST, else the "
        "machine's hostname (each host of a swarm needs its own)")
    seed_protocol: bool = Field(
        True, description="also run tasks announced the seed's way (task:{id} and "
        "channel:tasks), shared with any other swarm that serves them")

    @model_validator(mode="after")
    def _default_pool_exists(self) -> SwarmSpec:
        if self.default_pool is None:  # the first worker pool (a lead's must be given)
            self.default_pool = next((n for n, p in self.pools.items() if p.role == "worker"),
                                     next(iter(self.pools)))
        elif self.default_pool not in self.pools:
            raise ValueError(f"default_pool {self.default_pool!r} is not one of the pools")
        return self

    @field_validator("name", "host")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not NAME.match(value):
            raise ValueError("must be letters, digits, '_', '.', '-' (at most 63)")
        return value

    @field_validator("redis")
    @classmethod
    def _redis(cls, value: str) -> str:
        if value != "embedded" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be 'embedded' or a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("pools")
    @classmethod
    def _pool_names(cls, value: dict[str, Pool]) -> dict[str, Pool]:
        for name in value:
            if not POOL_NAME.match(str(name)):
                raise ValueError(f"pool name {name!r} must be letters, digits and '_'")
        return value

    # Filled in by load(); not part of the file.
    _source: Path | None = PrivateAttr(None)
    _host: str = PrivateAttr("")

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def host_name(self) -> str:
        """This host's name in the swarm: ``host``, else $SWARM_HOST, else the hostname."""
        return self._host or self.host or machine_host()

    def pool_of(self, worker_id: str) -> str:
        return worker_id.rsplit("-", 1)[0]


def machine_host() -> str:
    """The machine's hostname, as a host name swarm accepts (the first label if the
    whole name is too long; anything else replaced by '-')."""
    name = socket.gethostname() or "localhost"
    if len(name) > 63:
        name = name.split(".")[0][:63]
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", name)
    return name if NAME.match(name) else "host-" + name[:58]


def yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- loading -----------------------------------------------------------------------

_PYDANTIC_BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum",
                   "le": "maximum"}


def json_schema() -> dict[str, Any]:
    """The spec's JSON Schema. Bounds on our Duration/Size types come out of pydantic
    under its own names (``gt``); rename them to the JSON Schema keywords."""

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {_PYDANTIC_BOUNDS.get(k, k) if k in _PYDANTIC_BOUNDS and
                    isinstance(v, (int, float)) else k: fix(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(item) for item in node]
        return node

    schema: dict[str, Any] = fix(SwarmSpec.model_json_schema())
    return schema


def iter_worker_ids(spec: SwarmSpec) -> Iterator[tuple[str, str]]:
    """(pool, worker id) for every slot the spec asks for, in a stable order."""
    for pool_name, pool in spec.pools.items():
        for index in range(1, pool.workers + 1):
            yield pool_name, f"{pool_name}-{index}"
