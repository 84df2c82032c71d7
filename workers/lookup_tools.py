"""The tools that reach beyond the workdir to the swarm itself: search its findings,
read one whole (workers/findings_index.py), and ask the librarian (the seed's archive
query: ``query:archive:{uuid}`` -> ``response:archive:{uuid}``, workers/librarian.py).

Asking never hangs a task: after ``librarian_timeout`` the worker is told the librarian
did not answer and carries on without it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from workers import keys
from workers.findings_index import Lookup
from workers.tool_base import ToolError, arg, positive

READ_CHARS = 40_000  # of a finding's result, read whole
QUERY_TTL = 3600  # an unanswered question is forgotten after this long

_STR = {"type": "string"}

DEFINITIONS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # name: (setting, description, input_schema)
    "search_findings": ("findings", "Search the swarm's findings (what other workers found "
                        "and reported) for words; returns ids and short excerpts.",
                        {"type": "object", "properties": {
                            "query": _STR, "limit": {"type": "integer", "minimum": 1,
                                                     "maximum": 20}}, "required": ["query"]}),
    "read_finding": ("findings", "Read one finding whole. A finding you read and use is "
                     "cited by your own.",
                     {"type": "object", "properties": {"finding_id": _STR},
                      "required": ["finding_id"]}),
    "ask_librarian": ("ask_librarian", "Ask the librarian, who knows the project's archive "
                      "by heart, a question about it. Answers within a time limit, or not "
                      "at all: then carry on without it.",
                      {"type": "object", "properties": {"question": _STR},
                       "required": ["question"]}),
}


class SwarmTools:
    """The lookup tools of one task (``librarian``: whether the swarm has one)."""

    def __init__(self, redis: Any, swarm: str, asker: str, run: str | None = None,
                 librarian: bool = False, timeout: float = 60.0) -> None:
        self.redis = redis
        self.swarm = swarm
        self.asker = asker
        self.lookup = Lookup(redis, swarm, run)
        self.librarian = librarian
        self.timeout = timeout

    def offers(self, name: str) -> bool:
        return name != "ask_librarian" or self.librarian

    async def run(self, name: str, args: dict[str, Any]) -> str:
        if name == "search_findings":
            return await self.lookup.search_text(arg(args, "query", str),
                                                 positive(args, "limit") or 10)
        if name == "read_finding":
            return await self._read(arg(args, "finding_id", str).strip())
        if name == "ask_librarian":
            return await self._ask(arg(args, "question", str))
        raise ToolError(f"unknown tool: {name}")

    async def _read(self, finding_id: str) -> str:
        finding = await self.lookup.finding(finding_id)
        if finding is None:
            raise ToolError(f"no finding {finding_id!r}")
        result = str(finding.get("result") or "")
        if len(result) > READ_CHARS:
            result = result[:READ_CHARS] + f"\n[... {len(result) - READ_CHARS} more characters]"
        head = {k: finding.get(k) for k in ("finding_id", "task_id", "worker_id", "status",
                                            "files_changed", "citations", "tool_calls")}
        return (json.dumps(head) + f"\nTASK: {str(finding.get('task', ''))[:4000]}\n"
                f"RESULT:\n{result}")

    async def _ask(self, question: str) -> str:
        question = question.strip()
        if not question:
            raise ToolError("the question is empty")
        if len(question) > 8000:
            raise ToolError("ask a shorter question (at most 8,000 characters)")
        query_id = str(uuid.uuid4())
        await self.redis.set(keys.archive_query(query_id), json.dumps(
            {"question": question, "swarm": self.swarm, "from": self.asker}), ex=QUERY_TTL)
        deadline = time.monotonic() + self.timeout
        pause = 0.05
        while True:
            answer = await self.redis.get(keys.archive_response(query_id))
            if answer is not None:
                return str(answer)
            if time.monotonic() >= deadline:
                return (f"The librarian did not answer within {self.timeout:g}s; carry on "
                        "without its answer.")
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.1)
