"""The swarm spec: YAML in, typed and validated models out.

Every mistake becomes a :class:`SpecError` whose text is one line naming the file, the
line and the field, e.g. ``swarm.yaml:7: pools.haiku.workers: must be >= 1``.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Iterator, Mapping

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    WithJsonSchema,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from launcher.units import parse_duration, parse_size

# Durations (500ms, 5s, 2m) and sizes (512MB, 1GiB) as the spec's field types.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?(ms|s|m|h)?)+\s*$"},
            ],
            "description": "seconds, or a duration like 500ms, 5s, 2m, 1h30m",
        }
    ),
]

Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([KkMmGgTt][Ii]?[Bb]?|[Bb])?\s*$"},
            ],
            "description": "bytes, or a size like 512MB (powers of 1000) or 1GiB (powers of 1024)",
        }
    ),
]


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]{0,62}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
IMPORT_STRING = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class SpecError(Exception):
    """A user's mistake in the spec; ``str()`` is the whole one-line message."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: str) -> str:
    """Escape line breaks and other control characters so a message stays one line."""
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a whole number")
    return value


Count = Annotated[int, BeforeValidator(_not_bool)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


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
        from workers.tools import SECRET_ENV

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
        return {
            "input": self.input, "output": self.output,
            "cache_write": self.input * 1.25 if self.cache_write is None else self.cache_write,
            "cache_write_1h": self.input * 2 if self.cache_write_1h is None else self.cache_write_1h,
            "cache_read": self.input * 0.1 if self.cache_read is None else self.cache_read,
        }


class RateLimit(_Model):
    rpm: Count | None = Field(None, ge=1, description="requests per minute, swarm-wide")
    tpm: Count | None = Field(None, ge=1, description="input+output tokens per minute")


class Pool(_Model):
    model: str = Field(min_length=1, description="the Claude model id")
    workers: Count = Field(1, ge=1, le=4096)
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
    tools: Tools = Field(default_factory=Tools)
    budget_usd: float | None = Field(None, gt=0, description="no new task once this pool spent it")
    max_cost_usd: float | None = Field(None, gt=0, description="a task spending this fails")

    @field_validator("env", mode="before")
    @classmethod
    def _env_as_strings(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v if isinstance(v, str) else _yaml_scalar(v) for k, v in value.items()}
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
        if self.default_pool is None:
            self.default_pool = next(iter(self.pools))
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


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- loading -----------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
Loc = tuple[Any, ...]


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> SwarmSpec:
    """Read, expand and validate a spec file; relative paths are taken from its folder."""
    path = Path(path)
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{label}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{label}: cannot read: {exc}") from None
    environ = os.environ if environ is None else environ
    data, lines = _read_yaml(text, label)
    data = _expand(data, (), lines, label, environ)
    try:
        spec = SwarmSpec.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, lines, label) from None
    _resolve(spec, path, lines, label)
    if spec.host is None and environ.get("SWARM_HOST"):
        if not NAME.match(environ["SWARM_HOST"]):
            raise SpecError(f"SWARM_HOST: {environ['SWARM_HOST']!r} must be letters, "
                            "digits, '_', '.', '-' (at most 63)")
        spec._host = environ["SWARM_HOST"]
    return spec


def _resolve(spec: SwarmSpec, path: Path, lines: dict[Loc, int], label: str) -> None:
    from launcher.fence import fence_for, workdir_problem

    base = path.resolve().parent
    spec._source = path.resolve()
    spec.state_dir = (base / spec.state_dir).resolve()
    spec.logs.dir = (base / spec.logs.dir).resolve()
    fence = fence_for(spec)
    for name, pool in spec.pools.items():
        loc = ("pools", name, "workdir")
        pool.workdir = (base / pool.workdir).resolve()
        pool.tools.shell_paths = tuple((base / p).resolve() for p in pool.tools.shell_paths)
        if not pool.workdir.is_dir():
            problem: str | None = f"no such directory: {pool.workdir}"
        else:
            problem = workdir_problem(pool.workdir, fence)
        if problem:
            raise SpecError(f"{label}:{_line_of(loc, lines)}: {_dotted(loc)}: {problem}")


def _read_yaml(text: str, label: str) -> tuple[Any, dict[Loc, int]]:
    try:
        return _compose(text, label)
    except RecursionError:
        raise SpecError(f"{label}: invalid YAML: nested too deeply") from None


def _compose(text: str, label: str) -> tuple[Any, dict[Loc, int]]:
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # a character YAML does not allow
        raise SpecError(f"{label}: invalid YAML: {exc}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError(f"{label}:1: the spec is empty")
        lines: dict[Loc, int] = {(): node.start_mark.line + 1}
        _index_lines(node, (), lines, label)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise SpecError(f"{label}:{line}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{label}: invalid YAML: {exc}") from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        # a tagged scalar PyYAML cannot build (`!!int abc`), a 5000-digit number, ...
        raise SpecError(f"{label}: invalid YAML value: {exc}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise SpecError(f"{label}:{lines[()]}: the spec must be a mapping of fields")
    return data, lines


def _index_lines(node: yaml.Node, loc: Loc, lines: dict[Loc, int], label: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                raise SpecError(f"{label}:{line}: {_dotted(loc)}: keys must be plain names")
            key = key_node.value
            if key in seen and key != "<<":
                line = key_node.start_mark.line + 1
                raise SpecError(f"{label}:{line}: {_dotted(loc + (key,))}: duplicate key")
            seen.add(key)
            lines[loc + (key,)] = key_node.start_mark.line + 1
            _index_lines(value_node, loc + (key,), lines, label)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[loc + (index,)] = item.start_mark.line + 1
            _index_lines(item, loc + (index,), lines, label)


def _expand(value: Any, loc: Loc, lines: dict[Loc, int], label: str, environ: Any) -> Any:
    """``${VAR}`` and ``${VAR:-default}`` in every string value (not in keys)."""
    if isinstance(value, dict):
        return {k: _expand(v, loc + (k,), lines, label, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, loc + (i,), lines, label, environ) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = environ.get(name)
        if found not in (None, ""):
            return str(found)
        if default is not None:
            return default
        line = _line_of(loc, lines)
        raise SpecError(f"{label}:{line}: {_dotted(loc)}: environment variable {name} is not set")

    return _VAR.sub(substitute, value)


def _first_error(exc: ValidationError, lines: dict[Loc, int], label: str) -> SpecError:
    found = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        found.append((_line_of(loc, lines), _dotted(loc), _message(err)))
    found.sort(key=lambda item: item[0])
    line, field, message = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    where = f"{field}: " if field else ""
    return SpecError(f"{label}:{line}: {where}{message}{more}")


def _line_of(loc: Loc, lines: dict[Loc, int]) -> int:
    """The line of the deepest known part of ``loc``. The index is keyed by each key's
    YAML text, the data by its value (``1`` for ``1:``), so compare as text."""
    while loc:
        for candidate in (loc, tuple(_yaml_scalar(p) if not isinstance(p, str) else p
                                     for p in loc)):
            if candidate in lines:
                return lines[candidate]
        loc = loc[:-1]
    return lines[()]


def _dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc)


_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown field",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "path_type": "must be a path",
}


def _message(err: Any) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    for bound, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if bound in ctx and kind.startswith(("greater", "less")):
            return f"must be {op} {ctx[bound]}"
    if kind == "too_short":
        return "must not be empty"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    msg = str(err["msg"])
    return msg[:1].lower() + msg[1:]


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

    return fix(SwarmSpec.model_json_schema())  # type: ignore[no-any-return]


def iter_worker_ids(spec: SwarmSpec) -> Iterator[tuple[str, str]]:
    """(pool, worker id) for every slot the spec asks for, in a stable order."""
    for pool_name, pool in spec.pools.items():
        for index in range(1, pool.workers + 1):
            yield pool_name, f"{pool_name}-{index}"
