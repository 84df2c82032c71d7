"""The lead's tools: hand out tasks, wait for the next findings, read one whole, search
them, set the run's shared context, see the run's spend and limits.

What comes back is bounded whatever the run's size: a finding arrives as its header (its
task, pool, status, tool calls, files changed, cost) and its result cut at
``SUMMARY_CHARS``, at most ``MAX_PER_WAIT`` per wait; the whole text is one
``read_finding`` away. Each result also has a one-line digest per finding, which the lead
keeps in place of the result once its conversation grows long (workers/lead.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from workers import keys
from workers.config import WorkerConfig
from workers.findings_index import Lookup
from workers.run_book import RunBook
from workers.tool_base import ToolError, arg, one_line, positive, seconds

SUMMARY_CHARS = 1500  # of a finding's result, as it arrives
MAX_PER_WAIT = 10  # findings per wait_for_findings
READ_CHARS = 40_000  # of a finding's result, read whole
CONTEXT_CHARS = 50_000  # the run's shared context, at most
MAX_HAND_OUT = 100  # tasks in one hand_out call

_OBJ = {"type": "object"}


def _schema(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required}


DEFINITIONS: list[dict[str, Any]] = [
    {"name": "hand_out",
     "description": "Hand tasks to worker pools; they start at once and run in parallel. "
     "Each task is self-contained: the worker sees only its objective, the output "
     "wanted and the files named. Returns each task's id, or why it was refused (a limit "
     "of the run).",
     "input_schema": _schema({"tasks": {"type": "array", "items": _schema({
         "objective": {"type": "string", "description": "what the worker must do"},
         "output": {"type": "string", "description": "what it must report back"},
         "files": {"type": "array", "items": {"type": "string"},
                   "description": "paths under the workdir it should look at"},
         "pool": {"type": "string", "description": "which pool (default the first)"},
         "lookup": {"type": "string", "enum": ["swarm", "run"], "description":
                    "which findings the worker may search: the swarm's (default) or "
                    "this run's only"},
     }, ["objective", "output"])}}, ["tasks"])},
    {"name": "wait_for_findings",
     "description": "Wait for the next findings of tasks you handed out: returns as soon as "
     "at least one arrives (any one, so you can act on it while others still run), with "
     "each finding's id, status, evidence and result (cut short: read_finding has it "
     "whole). Returns at once if nothing is in flight.",
     "input_schema": _schema({"timeout": {"type": "number", "description": "seconds, "
                                          "default 300"},
                              "max": {"type": "integer", "minimum": 1,
                                      "maximum": MAX_PER_WAIT}}, [])},
    {"name": "read_finding", "description": "Read one finding whole.",
     "input_schema": _schema({"finding_id": {"type": "string"}}, ["finding_id"])},
    {"name": "search_findings",
     "description": "Search findings for words: this run's (scope run, the default) or "
     "the whole swarm's newest; returns the ids and a short excerpt of each match.",
     "input_schema": _schema({"query": {"type": "string"},
                              "scope": {"type": "string", "enum": ["run", "swarm"]},
                              "limit": {"type": "integer", "minimum": 1, "maximum": 20}},
                             ["query"])},
    {"name": "set_context",
     "description": "Set the shared context every task of this run handed out from now on "
     "sees (facts they all need, conventions, what was found so far). Replaces the last.",
     "input_schema": _schema({"text": {"type": "string"}}, ["text"])},
    {"name": "run_status",
     "description": "The run's spend against its budget, tasks handed out, in flight and "
     "done, and the limits left.", "input_schema": _schema({}, [])},
]
NAMES = frozenset(d["name"] for d in DEFINITIONS)


class RunTools:
    """The lead's tools for one run. ``state`` is the lead's checkpointed state (the
    findings stream's cursor lives there); ``keep`` is what to hold back for the lead's
    own last call, in nano-dollars, as of now."""

    def __init__(self, redis: Any, cfg: WorkerConfig, book: RunBook, state: dict[str, Any],
                 keep: Callable[[], int], deadline: float) -> None:
        self.redis = redis
        self.cfg = cfg
        self.book = book
        self.state = state
        self.keep = keep
        self.deadline = deadline
        self._turn = 0
        self._count = 0

    def begin_answer(self, turn: int) -> None:
        """Task ids are ``{run}.{turn}.{n}``: the answer's turn and the task's place in
        it, so running the same answer's tools again hands out nothing new."""
        self._turn, self._count = turn, 0

    async def run(self, name: str, args: dict[str, Any]) -> tuple[str, str | None]:
        """(the result, a short digest of it or None)."""
        if name == "hand_out":
            return await self._hand_out(args), None
        if name == "wait_for_findings":
            return await self._wait(args)
        if name == "read_finding":
            return await self._read(args), None
        if name == "search_findings":
            return await self._search(args), None
        if name == "set_context":
            return await self._set_context(args), None
        if name == "run_status":
            return await self.status(), None
        raise ToolError(f"unknown tool: {name}")

    # --- hand_out -----------------------------------------------------------------------

    async def _hand_out(self, args: dict[str, Any]) -> str:
        tasks = arg(args, "tasks", list)
        if not tasks:
            raise ToolError("tasks is empty")
        if len(tasks) > MAX_HAND_OUT:
            raise ToolError(f"at most {MAX_HAND_OUT} tasks in one hand_out")
        lines = []
        for spec in tasks:
            self._count += 1
            task_id = f"{self.book.run_id}.{self._turn}.{self._count}"
            lines.append(f"{task_id}: {await self._one(task_id, spec)}")
        view = await self.book.view()
        lines.append(f"(in flight {view.in_flight}; {_money(view)})")
        return "\n".join(lines)

    async def _one(self, task_id: str, spec: Any) -> str:
        if not isinstance(spec, dict):
            return "refused: each task must be an object with objective and output"
        objective, output = spec.get("objective"), spec.get("output")
        if not isinstance(objective, str) or not objective.strip():
            return "refused: no objective"
        if not isinstance(output, str):
            return "refused: no output wanted"
        files = spec.get("files") or []
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            return "refused: files must be a list of paths"
        pools = list(self.cfg.delegates)
        pool = spec.get("pool") or (pools[0] if pools else "")
        if pool not in self.cfg.delegates:
            return (f"refused: pool {pool!r} is not one you may delegate to "
                    f"({', '.join(pools) or 'none'})")
        delegate = self.cfg.delegates[pool]
        view = await self.book.view()
        if view.budget and not delegate.priced:
            return (f"refused: pool {pool}'s model {delegate.model} has no price, so the "
                    "run's budget cannot be kept")
        description = (f"{objective.strip()}\n\nREPORT BACK: {output.strip()}"
                       if output.strip() else objective.strip())
        payload = {"description": description, "files": files, "pool": pool,
                   "swarm": self.cfg.swarm, "run": self.book.run_id,
                   "max_cost_nano": delegate.worst_nano}
        if spec.get("lookup") == "run":
            payload["lookup_run"] = self.book.run_id
        verdict, why = await self.book.hand_out(task_id, pool, delegate.worst_nano,
                                                self.keep(), payload)
        if verdict == "refused":
            return f"refused: {why}"
        return (f"handed out to {pool} (reserved ${delegate.worst_nano / 1e9:.6f}, "
                "its worst case)")

    # --- findings -----------------------------------------------------------------------

    async def _wait(self, args: dict[str, Any]) -> tuple[str, str | None]:
        timeout = min(seconds(args, "timeout", 300.0), max(0.0, self.deadline - time.monotonic()))
        most = min(positive(args, "max") or MAX_PER_WAIT, MAX_PER_WAIT)
        stream = keys.run_events(self.cfg.swarm, self.book.run_id)
        end = time.monotonic() + timeout
        while True:
            got = await self.redis.xread({stream: self.state["cursor"]}, count=most)
            if got:
                entries = got[0][1]
                self.state["cursor"] = entries[-1][0]
                return await self.describe([fields for _id, fields in entries])
            view = await self.book.view()
            if view.in_flight <= 0:
                return (f"No task of this run is in flight, and you have seen every finding "
                        f"({view.finished} in all). Hand out more work, or write your "
                        "synthesis."), None
            left = end - time.monotonic()
            if left <= 0:
                return (f"No finding arrived within {timeout:g}s; {view.in_flight} task(s) "
                        "still in flight."), None
            # wake on the next entry (or in half a second, to look at the clock again)
            await self.redis.xread({stream: self.state["cursor"]}, count=1,
                                   block=max(1, int(min(left, 0.5) * 1000)))

    async def describe(self, entries: list[dict[str, str]]) -> tuple[str, str]:
        """Findings as the lead sees them as they arrive, and their one-line digests."""
        ids = [e.get("finding", "") for e in entries]
        raws = await self.redis.mget([keys.finding(i) for i in ids]) if ids else []
        texts, digests = [], []
        for entry, raw in zip(entries, raws):
            finding = _load(raw)
            head = _header(entry.get("finding", ""), entry.get("task", ""), finding,
                           entry.get("status", ""))
            body = _body(finding, SUMMARY_CHARS)
            texts.append(f"{head}\n{body}")
            digests.append(f"{head}: {one_line(body, 160)}")
        return "\n\n".join(texts), "\n".join(digests)

    async def _read(self, args: dict[str, Any]) -> str:
        finding_id = arg(args, "finding_id", str).strip()
        raw = await self.redis.get(keys.finding(finding_id))
        if raw is None:
            raise ToolError(f"no finding {finding_id!r}")
        finding = _load(raw)
        head = _header(finding_id, str(finding.get("task_id", "")), finding,
                       str(finding.get("status", "")))
        cites = finding.get("citations") or []
        return (f"{head}\nTASK: {str(finding.get('task', ''))[:4000]}\n"
                + (f"CITES: {', '.join(map(str, cites))}\n" if cites else "")
                + f"RESULT:\n{_body(finding, READ_CHARS)}")

    async def _search(self, args: dict[str, Any]) -> str:
        run = self.book.run_id if arg(args, "scope", str, "run") == "run" else None
        return await Lookup(self.redis, self.cfg.swarm, run).search_text(
            arg(args, "query", str), min(positive(args, "limit") or 10, 20))

    async def _set_context(self, args: dict[str, Any]) -> str:
        text = arg(args, "text", str)
        if len(text) > CONTEXT_CHARS:
            raise ToolError(f"the context is {len(text)} characters; at most {CONTEXT_CHARS}")
        await self.redis.set(keys.run_context(self.cfg.swarm, self.book.run_id), text,
                             ex=keys.RUN_TTL)
        return f"shared context set ({len(text)} characters): tasks that start from now see it"

    async def status(self) -> str:
        view = await self.book.view()
        return (f"{_money(view)}\ntasks: {view.handed} handed out"
                f"{f' of at most {view.max_tasks}' if view.max_tasks else ''}, "
                f"{view.in_flight} in flight"
                f"{f' (at most {view.max_in_flight} at once)' if view.max_in_flight else ''}, "
                f"{view.finished} reported back\nlead turns: {self.state['turn']} of "
                f"{self.cfg.max_turns}"
                + (f"\nlimit reached: {view.limit}" if view.limit else ""))

    async def drain(self, until: float) -> list[tuple[str, str]]:
        """Every finding still to come (tasks in flight) until ``until`` (monotonic),
        described; for the lead's last word when a limit ends its run."""
        found: list[tuple[str, str]] = []
        while True:
            left = until - time.monotonic()
            text, digest = await self._wait({"timeout": max(0.001, left)})
            if digest is None:
                return found
            found.append((text, digest))
            await asyncio.sleep(0)


def _money(view: Any) -> str:
    budget = f" of a budget of ${view.budget / 1e9:.6f}" if view.budget else " (no budget)"
    return (f"spent ${view.spent / 1e9:.6f}{budget}, ${view.reserved / 1e9:.6f} reserved "
            "for tasks in flight")


def _load(raw: Any) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _header(finding_id: str, task_id: str, finding: dict[str, Any], status: str) -> str:
    calls = finding.get("tool_calls")
    files = finding.get("files_changed") or []
    cost = finding.get("cost")
    parts = [f"[{finding_id}] task {task_id} ({finding.get('pool', '?')}): {status}"]
    if isinstance(calls, int):
        parts.append(f"{calls} tool call{'s' if calls != 1 else ''}"
                     + (" (it looked at nothing: unverified)" if calls == 0 else ""))
    parts.append(f"files changed: {', '.join(map(str, files))}" if files else "no files changed")
    if isinstance(cost, (int, float)):
        parts.append(f"${cost:.6f}")
    return " · ".join(parts)


def _body(finding: dict[str, Any], limit: int) -> str:
    status = finding.get("status")
    result = str(finding.get("result") or "")
    if status == "handed_back":
        text = f"HANDED BACK (needs deeper reasoning): {result}"
    elif status in ("failed", "dead"):
        text = f"FAILED: {finding.get('error') or 'no reason given'}" + (
            f"\n{result}" if result else "")
    else:
        text = result or "(empty result)"
    if finding.get("truncated"):
        text += "\n[the worker's answer was cut off at its max_tokens]"
    if len(text) > limit:
        text = (text[:limit] + f"\n[... {len(text) - limit} more characters: "
                f"read_finding {finding.get('finding_id', '')}]")
    return text

