"""`swarm mcp`: the swarm as an MCP server on stdio, so that an MCP client (Claude Code,
Claude Desktop) drives it: the user's own session coordinates, handing tasks to the
workers, waiting for their findings, reading and searching them, starting runs.

Each tool is a call of the Python API (launcher/client.py) whose answer is JSON and
bounded: a long text is cut and says how to read the rest. The swarm is located again
on every call, as the other commands find it (``--swarm NAME``, the ``.swarm/`` folder
here or in a parent, ``SWARM_REDIS_URL``), so the server starts before the swarm does
and follows it through restarts. Whatever goes wrong (a swarm that is not running, an
unknown task, bad arguments, a timeout) is a tool error of one line; the server goes on.
Waits are taken in slices of a second, so a client that goes away never leaves the
server waiting for minutes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal, Optional, TypeVar

import anyio
import redis
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, InputRequiredResult
from pydantic import Field, ValidationError

from launcher.client import Swarm, SwarmError
from launcher.connect import NotRunning, locate
from launcher.state import NotFound
from workers.states import TaskState

log = logging.getLogger("swarm.mcp")

RESULT_CHARS = 4000  # of a finding's result in a task's or a run's answer
TEXT_CHARS = 1000  # of any other text
ITEMS = 50  # of any list
WAIT_DEFAULT, WAIT_MAX = 120.0, 600.0
T = TypeVar("T")

INSTRUCTIONS = """\
A swarm of Claude workers (cheaper models) that run tasks in parallel and report
findings. You coordinate: split the work into self-contained tasks (each says what to
look at and what answer to give back), hand them out with submit_tasks, then
wait_for_task on each and act on what comes back; read_finding has a finding whole,
search_findings finds earlier ones. For a goal to be planned by the swarm's own lead,
start_run then wait_for_run. swarm_status and swarm_cost show the workers and the spend.
"""

# --- the arguments, typed (the client sees these as the tools' JSON Schema) -----------

Text = Annotated[str, Field(min_length=1, description="What the worker should do: "
                            "self-contained, with the output wanted.")]
Pool = Annotated[Optional[str], Field(description="Which worker pool (default: the "
                                      "swarm's default pool).")]
Files = Annotated[Optional[list[str]], Field(description="Files the task is about, "
                                             "relative to the pool's workdir.")]
TaskId = Annotated[str, Field(min_length=1, max_length=200, description="A task's id, "
                              "as submit_task returned it.")]
RunId = Annotated[str, Field(min_length=1, max_length=200, description="A run's id "
                             "(run_...), as start_run returned it.")]
FindingId = Annotated[str, Field(min_length=1, max_length=200,
                                 description="A finding's id (finding_...).")]
Timeout = Annotated[float, Field(ge=0, le=WAIT_MAX, description=f"Seconds to wait, at "
                                 f"most {WAIT_MAX:g}.")]


class Server(MCPServer):
    """MCPServer whose refusal of a call's arguments is one line, like every error."""

    async def call_tool(self, name: str, arguments: dict[str, Any],
                        context: Context[Any, Any] | None = None,
                        ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause = exc.__cause__
            if not isinstance(cause, ValidationError):
                raise
            said = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                             for e in cause.errors())
            raise ToolError(_line(f"bad arguments for {name}: {said}")) from cause


class Located:
    """The swarm the server is about: located again on each call (a few small files),
    its Redis client kept while the swarm's Redis stays the same."""

    def __init__(self, name: str | None) -> None:
        self.name = name
        self.label = name or "swarm"
        self._lock = threading.Lock()
        self._key: tuple[str, str, str | None] | None = None
        self._swarm: Swarm | None = None

    def __call__(self) -> Swarm:
        found = locate(self.name)
        key = (found.name, found.target.url, found.target.password)
        with self._lock:
            self.label = found.name
            if self._swarm is None or self._key != key:
                self._key, self._swarm = key, Swarm(found.name, found.client())
            return self._swarm


@contextmanager
def answering(place: Located) -> Iterator[None]:
    """Every failure as a tool error of one line."""
    try:
        yield
    except ToolError:
        raise
    except (NotFound, NotRunning, SwarmError) as exc:  # SubmitError is a SwarmError
        raise ToolError(_line(str(exc))) from None
    except redis.RedisError as exc:
        raise ToolError(_line(f"swarm '{place.label}' does not answer (its Redis: {exc}); "
                              "is it running? (swarm status)")) from None
    except Exception as exc:  # a bug of ours: the client gets one line, the log the rest
        log.exception("tool failed")
        raise ToolError(_line(f"internal error: {type(exc).__name__}: {exc}")) from exc


def _line(text: str) -> str:
    return " ".join(text.split())


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(lambda: fn(*args))


# --- bounding the answers ------------------------------------------------------------


def clip(value: Any, chars: int = TEXT_CHARS, items: int = ITEMS) -> Any:
    """``value`` made JSON-friendly, each text cut at ``chars`` and each list at
    ``items``, saying how much was left out."""
    if isinstance(value, str):
        if len(value) <= chars:
            return value
        return value[:chars] + f" [... {len(value) - chars} more characters]"
    if isinstance(value, dict):
        return {str(k): clip(v, chars, items) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        seq = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
        kept = [clip(v, chars, items) for v in seq[:items]]
        return kept + ([f"[... {len(seq) - items} more]"] if len(seq) > items else [])
    if value is None or isinstance(value, bool | int | float):
        return value
    return clip(str(value), chars, items)


def answer(value: Any) -> str:
    """A tool's answer: JSON on one line (the client's model reads it; indentation would
    cost it tokens)."""
    return json.dumps(value, ensure_ascii=False, default=str)


def finding_view(finding: dict[str, Any], offset: int = 0,
                 chars: int = RESULT_CHARS) -> dict[str, Any]:
    """A finding with its result from ``offset``, at most ``chars`` of it, and where
    the rest is."""
    result = str(finding.get("result") or "")
    view = clip({k: v for k, v in finding.items() if k != "result"})
    view["result_chars"] = len(result)
    end = offset + chars
    if end < len(result):
        view["result_next_offset"] = end
        view["result_rest"] = (f"{len(result) - end} more characters: read_finding("
                               f"finding_id={finding.get('finding_id')!r}, offset={end})")
    view["result"] = result[offset:end]
    return view


def run_view(info: dict[str, Any]) -> dict[str, Any]:
    view = clip({k: v for k, v in info.items() if k not in ("result", "tasks")})
    view["tasks"] = clip(info.get("tasks") or [], 300, 100)
    view["result"] = finding_view(info["result"]) if info.get("result") else None
    return view


def status_view(status: dict[str, Any]) -> dict[str, Any]:
    by_pool: dict[str, dict[str, int]] = {}
    for row in status["workers"]:
        states = by_pool.setdefault(str(row["pool"]), {})
        states[row["state"]] = states.get(row["state"], 0) + 1
    view = clip({k: v for k, v in status.items() if k != "workers"})
    view["workers_by_pool"] = by_pool
    view["workers"] = clip(status["workers"], 200, 40)
    return view


# --- the server and its tools ------------------------------------------------------


def build(name: str | None = None) -> MCPServer:
    """The MCP server of swarm ``name`` (or the one found here)."""
    place = Located(name)
    server = Server("swarm", instructions=INSTRUCTIONS, version=_version(), log_level="WARNING")
    tool = server.tool(structured_output=False)  # the JSON text, not a schema's copy too

    @tool
    def submit_task(text: Text, pool: Pool = None, files: Files = None) -> str:
        """Queue one task for a worker of the swarm. Returns its task_id; wait_for_task
        gives its finding."""
        with answering(place):
            return answer({"task_id": place().submit(text, pool, files or [])})

    @tool
    def submit_tasks(
        texts: Annotated[list[Text], Field(min_length=1, max_length=1000, description=(
            "The tasks, one text each: self-contained, with the output wanted."))],
        pool: Pool = None, files: Files = None,
    ) -> str:
        """Queue many tasks at once (at most 1000), all for the same pool. Returns their
        task_ids, in the same order; they run in parallel."""
        with answering(place):
            return answer({"task_ids": place().submit_many(texts, pool, files or [])})

    @tool
    async def wait_for_task(task_id: TaskId, timeout_s: Timeout = WAIT_DEFAULT) -> str:
        """Wait until the task has a finding (at most timeout_s seconds) and return it:
        status (done/failed), error, the result (cut at 4000 characters; read_finding
        has the rest), its cost and evidence. A timeout is an error; the task goes on."""
        with answering(place):
            api = await _in_thread(place)
            if await _in_thread(api.task, task_id) is None:
                raise ToolError(f"no task {task_id!r} in swarm '{api.name}'")
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    left = max(0.0, min(1.0, deadline - time.monotonic()))
                    return answer(finding_view(await _in_thread(api.wait, task_id, left)))
                except TimeoutError:
                    if time.monotonic() < deadline:
                        continue
                record = await _in_thread(api.task, task_id) or {}
                raise ToolError(f"task {task_id} has no finding after {timeout_s:g}s (state "
                                f"{record.get('state', '?')}); it goes on: wait_for_task "
                                "again, or read_task")

    @tool
    def read_task(task_id: TaskId) -> str:
        """A task's record: state, pool, attempts, worker, error, its text, and its
        finding if it has one (result cut at 4000 characters)."""
        with answering(place):
            api = place()
            record = api.task(task_id)
            if record is None:
                raise ToolError(f"no task {task_id!r} in swarm '{api.name}'")
            finding = record.pop("finding", None)
            view = clip(record)
            view["finding"] = finding_view(finding) if finding else None
            return answer(dict(view))

    @tool
    def read_finding(
        finding_id: FindingId,
        offset: Annotated[int, Field(ge=0, description="Where in the result to start.")] = 0,
        max_chars: Annotated[int, Field(ge=1, le=50_000, description=(
            "How much of the result to return."))] = 20_000,
    ) -> str:
        """A finding whole: its task, status, evidence, citations, cost, and its result
        from offset (max_chars of it; result_next_offset says where the rest starts)."""
        with answering(place):
            api = place()
            finding = api.finding(finding_id)
            if finding is None:
                raise ToolError(f"no finding {finding_id!r} in swarm '{api.name}'")
            return answer(finding_view(finding, offset, max_chars))

    @tool
    def search_findings(
        query: Annotated[str, Field(min_length=1, description="Words to look for.")],
        limit: Annotated[int, Field(ge=1, le=50, description="At most this many.")] = 10,
        run: Annotated[Optional[str], Field(description="Only this run's findings "
                                            "(run_...).")] = None,
    ) -> str:
        """Findings whose task or result has the query's words (the best matches, newest
        first among equals): finding_id, task_id, status, pool and an excerpt each. Read
        one whole with read_finding."""
        with answering(place):
            found = place().search_findings(query, limit, run)
            return answer({"query": query, "findings": clip(found, 600, limit)})

    @tool
    def start_run(
        goal: Annotated[str, Field(min_length=1, description="What the lead should reach.")],
        pool: Annotated[Optional[str], Field(description="Which lead pool (default the "
                                             "first).")] = None,
        budget_usd: Annotated[Optional[float], Field(gt=0, description=(
            "USD the run may spend, its lead and its tasks (default the pool's)."))] = None,
        max_tasks: Annotated[Optional[int], Field(ge=1, description=(
            "Tasks the lead may hand out."))] = None,
        max_in_flight: Annotated[Optional[int], Field(ge=1, description=(
            "Tasks running at once."))] = None,
        files: Files = None,
    ) -> str:
        """Give the swarm's lead (a stronger model) a goal: it plans, hands tasks to the
        workers, and writes a synthesis citing their findings, within the run's limits.
        Returns the run_id; wait_for_run gives the outcome."""
        with answering(place):
            run_id = place().run(goal, pool, budget_usd, max_tasks, max_in_flight, files or [])
            return answer({"run_id": run_id})

    @tool
    async def wait_for_run(run_id: RunId, timeout_s: Timeout = WAIT_DEFAULT) -> str:
        """Wait until the run ends (at most timeout_s seconds) and return it: state
        (done, partial, failed), spend, each task with a line of its finding, and the
        synthesis (result). A timeout is an error; the run goes on."""
        with answering(place):
            api = await _in_thread(place)
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    left = max(0.0, min(1.0, deadline - time.monotonic()))
                    return answer(run_view(await _in_thread(api.wait_run, run_id, left)))
                except TimeoutError:
                    if time.monotonic() < deadline:
                        continue
                info = await _in_thread(api.run_info, run_id) or {}
                raise ToolError(
                    f"run {run_id} has not ended after {timeout_s:g}s ({info.get('state')}: "
                    f"{info.get('finished', 0)} of {info.get('handed', 0)} tasks back, spent "
                    f"${info.get('spent_usd', 0):.4f}); it goes on: wait_for_run again, or "
                    "read_run")

    @tool
    def read_run(run_id: RunId) -> str:
        """A run as it stands: state, spend and budget, each task (pool, state, cost, a
        line of its finding) and, once it ended, its synthesis."""
        with answering(place):
            api = place()
            info = api.run_info(run_id)
            if info is None:
                raise ToolError(f"no run {run_id!r} in swarm '{api.name}'")
            return answer(run_view(info))

    @tool
    def list_runs(limit: Annotated[int, Field(ge=1, le=100)] = 20) -> str:
        """The newest runs first: state, tasks handed out and back, spend, budget, goal."""
        with answering(place):
            return answer({"runs": clip(place().runs(limit), 300, limit)})

    @tool
    def list_tasks(
        state: Annotated[Optional[TaskState], Field(description="Only tasks in this "
                                                    "state.")] = None,
        limit: Annotated[int, Field(ge=1, le=200)] = 20,
    ) -> str:
        """The newest tasks first: id, pool, state, attempts, worker, finding id, error."""
        with answering(place):
            rows = place().tasks(None if state is None else str(state), limit)
            return answer({"tasks": clip(rows, 300, limit)})

    @tool
    def swarm_status() -> str:
        """Who is alive and busy: the swarm's state, hosts, pools, pauses, the task
        counts, and each worker (state, current task, done, failed, restarts)."""
        with answering(place):
            return answer(status_view(place().status()))

    @tool
    def swarm_cost(
        by: Literal["worker", "host", "pool", "model", "run", "task"] = "worker",
        since: Annotated[Optional[str], Field(description="Only the last DURATION, "
                                              "e.g. 30m or 1h.")] = None,
        limit: Annotated[int, Field(ge=1, le=50, description=(
            "With by=task: the dearest this many."))] = 20,
    ) -> str:
        """What the swarm spent, by worker, host, pool, model, run or task, with the
        total last: calls, tokens, cost in USD, cache hit ratio, and what the same
        tokens would have cost on the reference model."""
        from launcher.units import parse_duration

        with answering(place):
            try:
                seconds = None if since is None else parse_duration(since)
            except ValueError as exc:
                raise ToolError(f"since: {exc}") from None
            report = place().cost(by, seconds, limit)
            rows = [row.as_dict() for row in report["rows"]]
            kept = rows if len(rows) <= 30 else [*rows[:29], rows[-1]]
            return answer({"by": by, "since_seconds": seconds,
                           "reference_model": report["reference_model"],
                           "price_source": report["price_source"], "rows": clip(kept),
                           "rows_left_out": len(rows) - len(kept)})

    return server


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("swarm")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return ""


def serve(name: str | None = None) -> None:
    """Answer an MCP client on stdin/stdout until it goes away."""
    build(name).run("stdio")
