"""The lead: runs a goal (`swarm run`) by handing tasks to worker pools, acting on each
finding as it arrives, and ending with a synthesis that cites the findings it used.

Limits are kept here and in Redis, never left to the prompt: each hand-out reserves its
task's worst case (workers/run_scripts.py: HAND_OUT refuses one the budget cannot
cover, keeping back what the lead's own last call can cost); before each turn the lead
checks its turns, its time and that the budget still pays for this turn and the last
one. At a limit, the lead collects what its tasks in flight still report (that costs
nothing more) and is asked for its synthesis with no tools: the run ends partial, and
says so. A budget too small for even that call ends with the findings listed.

Durable: the conversation and the place in it are checkpointed in Redis after every
answer and after every round of tools. A lead that dies is resumed by the next delivery
of its task (the queue's at-least-once), on any lead worker: tools of the last answer are
run again, and hand-outs are idempotent (a task's id is its run, the answer's turn and
its place in the answer), so nothing is handed out or paid for twice; findings that came
while no lead was there wait in the run's stream.

Bounded: findings come back cut short (workers/lead_tools.py), and once the conversation
passes ``COMPACT_AT`` characters the oldest tool results are replaced by their one-line
digests, so a request carries at most ``COMPACT_AT`` characters of history plus the
latest answer and its results (those cut to ``TURN_RESULT_CHARS``).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import anthropic

from workers.agent import Outcome, api_errors, as_params, assistant_turn, text_of
from workers.api_call import Caller
from workers.config import WorkerConfig
from workers.lead_tools import DEFINITIONS, NAMES, RunTools
from workers.payload import Task
from workers.pricing import PriceBook, Usage
from workers.prompt import lead_blocks
from workers.redis_retry import until_redis
from workers.run_book import RunBook, RunView
from workers.tools import Toolbox, ToolError

COMPACT_AT = 60_000  # characters of conversation before old tool results are digested
TURN_RESULT_CHARS = 40_000  # one answer's tool results, at most
NOTE_CHARS = 4_000  # swarm's note to the lead at a limit, at most
TIME_MARGIN = 60.0  # seconds before the task timeout at which the lead must finish
CONVERSATION_CACHE = {"type": "ephemeral"}
FINDING_ID = re.compile(r"\bfinding_[0-9a-f]{8,32}\b")


class Lead:
    def __init__(self, client: anthropic.AsyncAnthropic | None, cfg: WorkerConfig, redis: Any,
                 caller: Caller | None, prices: PriceBook, missing_key: str | None = None) -> None:
        self.client = client
        self.cfg = cfg
        self.redis = redis
        self.caller = caller
        self.prices = prices
        self.missing_key = missing_key

    async def run(self, task: Task, toolbox: Toolbox, context: str | None,
                  task_id: str = "", run_context: str | None = None) -> Outcome:
        outcome = Outcome("failed", "")
        if self.caller is None:
            outcome.error = self.missing_key or "no API client"
            return outcome
        run_id = str(task.extra.get("run") or task_id)
        with api_errors(outcome):
            await _Run(self, task, toolbox, context, task_id, run_id, outcome).main()
        outcome.files_changed = sorted(toolbox.files_changed)
        return outcome


class _Run:
    """One attempt at one run (a lead's task), from its checkpoint to its end."""

    def __init__(self, lead: Lead, task: Task, toolbox: Toolbox, context: str | None,
                 task_id: str, run_id: str, outcome: Outcome) -> None:
        self.lead, self.cfg, self.caller = lead, lead.cfg, lead.caller
        self.task, self.toolbox, self.task_id, self.run_id = task, toolbox, task_id, run_id
        self.outcome = outcome
        self.book = RunBook(lead.redis, self.cfg.swarm, run_id)
        self.deadline = time.monotonic() + max(1.0, self.cfg.task_timeout - TIME_MARGIN)
        tools = [*DEFINITIONS, *(d for d in toolbox.definitions()
                                 if d["name"] != "hand_back" and d["name"] not in NAMES)]
        self.base: dict[str, Any] = {
            "model": self.cfg.model, "max_tokens": self.cfg.max_tokens,
            "system": lead_blocks(context, _delegates(self.cfg), self.cfg.cache_ttl),
            "cache_control": CONVERSATION_CACHE, "tools": tools}
        self.state: dict[str, Any] = {}
        self.tools: RunTools | None = None

    async def main(self) -> None:
        await until_redis(lambda: self.book.begin(self.task.description, self.cfg.pool,
                                                  self.task_id, self.cfg.run_defaults),
                          f"starting run {self.run_id}")
        saved: dict[str, Any] | None = await until_redis(self.book.load,
                                                         "reading the run's checkpoint")
        self.state = saved or {
            "v": 1, "turn": 0, "cursor": "0-0", "digests": {}, "phase": "ready",
            "final": None, "messages": [{"role": "user", "content": await self._brief()}]}
        self.tools = RunTools(self.lead.redis, self.cfg, self.book, self.state, self._keep,
                              self.deadline)
        while True:
            if self.state["phase"] == "answered":
                await self._act()
                continue
            self._compact()
            request = {**self.base, "messages": self.state["messages"]}
            if self.state["final"] is None:
                why = await self._limit(request)
                if why and why.startswith("budget") and await self._wait_free():
                    continue
                if why:
                    await self._last_word(why)
                    continue
            else:
                request["tool_choice"] = {"type": "none"}
                if not (await self._view()).affords(self._bound(request)):
                    await self._listed("budget: too little left for the lead's synthesis")
                    return
            if await self._answer(request):
                return

    # --- one turn ----------------------------------------------------------------------

    async def _answer(self, request: dict[str, Any]) -> bool:
        """Call the model with ``request``; True when the run has its synthesis."""
        assert self.caller is not None
        answer = await self.caller.call(self.task_id, request, first=self.state["turn"] == 0,
                                        run=self.run_id)
        out, message = self.outcome, answer.message
        out.usage.add(answer.usage)
        used = answer.usage
        self.state["last"] = {"tokens": used.input + used.cache_creation + used.cache_read
                              + used.output, "chars": len(json.dumps(request, default=str))}
        out.calls += 1
        out.nano = None if answer.nano is None or out.nano is None else out.nano + answer.nano
        out.stop_reason = message.stop_reason
        self.state["turn"] += 1
        out.turns = self.state["turn"]
        assistant_turn(self.state["messages"], as_params(message.content))
        if message.stop_reason == "tool_use" and self.state["final"] is None:
            self.state["phase"] = "answered"
            await self._save()
            return False
        if message.stop_reason == "pause_turn":
            await self._save()
            return False
        text = text_of(message.content)
        if message.stop_reason == "refusal":
            out.result, out.error = text, f"the lead refused: {text[:300] or '(no words)'}"
            return True
        return await self._synthesis(text, truncated=message.stop_reason == "max_tokens")

    async def _act(self) -> None:
        """Run the tools the last answer asked for (again, after a resume: hand-outs are
        the same hand-outs) and append their results."""
        assert self.tools is not None
        self.tools.begin_answer(self.state["turn"])
        results = []
        for block in self.state["messages"][-1]["content"]:
            if block.get("type") != "tool_use":
                continue
            self.outcome.tool_calls += 1
            name, args = block.get("name", ""), block.get("input") or {}
            try:
                if name in NAMES:
                    text, digest = await self.tools.run(name, dict(args))
                else:
                    text, digest = await self.toolbox.run(name, dict(args)), None
                error = False
            except ToolError as exc:
                text, digest, error = str(exc), None, True
            if digest is not None:
                self.state["digests"][block["id"]] = digest
            results.append({"type": "tool_result", "tool_use_id": block["id"], "content": text,
                            **({"is_error": True} if error else {})})
        _clip_results(results, TURN_RESULT_CHARS)
        self.state["messages"].append({"role": "user", "content": results})
        self.state["phase"] = "ready"
        await self._save()

    # --- limits ------------------------------------------------------------------------

    async def _limit(self, request: dict[str, Any]) -> str | None:
        """The limit that ends the run before this turn, or None."""
        if self.state["turn"] >= self.cfg.max_turns - 1:
            return f"max lead turns: {self.cfg.max_turns} (one kept for the synthesis)"
        if time.monotonic() >= self.deadline:
            return f"time: the lead's task_timeout ({self.cfg.task_timeout:g}s) is near"
        view = await self._view()
        bound = self._bound(request)
        if not view.affords(2 * bound):
            return (f"budget: spent ${view.spent / 1e9:.6f} and ${view.reserved / 1e9:.6f} "
                    f"reserved of ${view.budget / 1e9:.6f}; another turn and the synthesis "
                    f"could cost ${2 * bound / 1e9:.6f}")
        return None

    async def _wait_free(self) -> bool:
        """The budget has no room for the next turn while tasks in flight hold their
        reservations: wait (free) for what they report, which releases them, and tell
        the lead. False if nothing is in flight."""
        assert self.tools is not None
        if (await self._view()).in_flight <= 0 or time.monotonic() >= self.deadline:
            return False
        text, digest = await self.tools.run("wait_for_findings", {"timeout": 600})
        _say(self.state["messages"], (
            "Before your next turn swarm waited for findings: the run's budget had no room "
            "for it while tasks in flight held their reservations. They reported (in short; "
            "read_finding gives one whole):\n" + (digest or text))[:NOTE_CHARS])
        await self._save()
        return True

    async def _last_word(self, why: str) -> None:
        """A limit ends the run: collect what the tasks in flight still report (free),
        then ask for the synthesis with no tools."""
        assert self.tools is not None
        await until_redis(lambda: self.book.note_limit(why), "noting the run's limit")
        arrived = await self.tools.drain(self.deadline + TIME_MARGIN / 2)
        note = (f"LIMIT REACHED ({why}). You cannot hand out more work or use tools now. "
                "Write your final synthesis from the findings you have, citing their ids, "
                "and say plainly what is missing or unverified.")
        if arrived:
            note += "\n\nFindings that arrived meanwhile (in short):\n" + "\n".join(
                digest for _text, digest in arrived)
        _say(self.state["messages"], note[:NOTE_CHARS])
        self.state["final"] = why
        await self._save()

    async def _listed(self, why: str) -> None:
        """The end when not even the synthesis can be paid: the findings, listed."""
        ids = await self.book.findings()
        self.outcome.status, self.outcome.partial = "done", why
        self.outcome.citations = ids
        self.outcome.result = (f"[partial: {why}]\nNo synthesis could be paid for. The run's "
                               f"findings ({len(ids)}): " + (", ".join(ids) or "none"))
        await self._finish_extra()

    # --- the end -----------------------------------------------------------------------

    async def _synthesis(self, text: str, truncated: bool) -> bool:
        cited = sorted(set(FINDING_ID.findall(text)))
        foreign = await self.book.foreign(cited)
        if foreign and self.state["turn"] < self.cfg.max_turns:
            _say(self.state["messages"], (
                "Refused: your synthesis cites " + ", ".join(foreign) + ", which "
                + ("is not a finding" if len(foreign) == 1 else "are not findings")
                + " of this run. Cite only ids of findings you were shown. Write the "
                "synthesis again."))
            await self._save()
            return False
        for fid in foreign:  # no turn left to ask again: the claim is struck out
            text = text.replace(fid, "[not a finding of this run]")
        view = await self._view()
        why = self.state["final"] or view.limit or ("citations: " + ", ".join(foreign)
                                                    if foreign else None)
        out = self.outcome
        out.status, out.truncated, out.partial = "done", truncated, why
        out.citations = [fid for fid in cited if fid not in foreign]
        out.result = f"[partial: {why}]\n{text}" if why else text
        await self._finish_extra()
        return True

    async def _finish_extra(self) -> None:
        view = await self._view()
        self.outcome.extra = {
            "run": self.run_id, "partial": self.outcome.partial is not None,
            "limit": self.outcome.partial, "run_cost": view.spent / 1e9,
            "tasks_handed_out": view.handed, "tasks_reported": view.finished,
            "tasks_in_flight": view.in_flight}

    # --- helpers -----------------------------------------------------------------------

    async def _brief(self) -> str:
        view = await self._view()
        limits = [f"budget ${view.budget / 1e9:.6f}" if view.budget else "no budget",
                  f"at most {view.max_tasks} tasks" if view.max_tasks else "",
                  f"{view.max_in_flight} in flight at once" if view.max_in_flight else "",
                  f"{self.cfg.max_turns} turns of yours"]
        files = ("\n\nFiles:\n" + "\n".join(f"- {f}" for f in self.task.files)
                 if self.task.files else "")
        return (f"GOAL: {self.task.description}{files}\n\nThis run ({self.run_id}) has: "
                + ", ".join(x for x in limits if x) + ".")

    async def _view(self) -> RunView:
        return await until_redis(self.book.view, f"reading run {self.run_id}")

    async def _save(self) -> None:
        await until_redis(lambda: self.book.save(self.state), "checkpointing the lead")

    def _keep(self) -> int:
        """What the lead's last call could cost, as the conversation stands."""
        return self._bound({**self.base, "messages": self.state["messages"]})

    def _bound(self, request: dict[str, Any]) -> int:
        """An upper bound on what ``request`` (with a note of up to ``NOTE_CHARS`` to
        come) can cost: its input is at most the last call's input and output tokens
        plus a token per character added since (the first call: per character), all
        written to the cache at the pool's TTL, and ``max_tokens`` of output."""
        chars = len(json.dumps(request, default=str)) + NOTE_CHARS
        last = self.state.get("last")
        tokens = chars if not last else last["tokens"] + max(0, chars - last["chars"])
        one_hour = self.cfg.cache_ttl == "1h"
        written = Usage(cache_creation=tokens, cache_creation_1h=tokens if one_hour else 0)
        prices, model = self.lead.prices, self.cfg.model
        return max(prices.nano(model, written) or 0, prices.nano(model, Usage(input=tokens))
                   or 0) + (prices.nano(model, Usage(output=self.cfg.max_tokens)) or 0)

    def _compact(self) -> None:
        """Past ``COMPACT_AT`` characters, replace the oldest tool results (never the
        last answer's) by their digests, down to 60% of it, so the cache is re-written
        seldom; results with no digest are elided."""
        messages = self.state["messages"]
        size = len(json.dumps(messages))
        if size <= COMPACT_AT:
            return
        done: dict[str, int] = self.state.setdefault("compacted", {})
        for stage in (1, 2):  # 1: digests in place of results; 2: digests elided too
            for message in messages[1:-2]:
                if message["role"] != "user" or not isinstance(message["content"], list):
                    continue
                for block in message["content"]:
                    if block.get("type") != "tool_result" or \
                            done.get(block["tool_use_id"], 0) >= stage:
                        continue
                    before = len(json.dumps(block["content"]))
                    digest = self.state["digests"].pop(block["tool_use_id"], None)
                    block["content"] = (
                        f"{digest}\n[shortened: read_finding gives one whole]" if digest
                        else "[elided to keep the conversation short: search_findings and "
                        "read_finding still have it]")
                    done[block["tool_use_id"]] = 2 if digest is None else stage
                    size -= before - len(json.dumps(block["content"]))
                    if size <= COMPACT_AT * 0.6:
                        return


def _say(messages: list[dict[str, Any]], text: str) -> None:
    """Add a note from swarm to the conversation, as the user (after the last tool
    results in the same message, where there are some)."""
    last = messages[-1]
    if last["role"] == "user":
        content = last["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        last["content"] = [*content, {"type": "text", "text": text}]
    else:
        messages.append({"role": "user", "content": text})


def _clip_results(results: list[dict[str, Any]], total: int) -> None:
    """Cut an answer's tool results so that together they stay within ``total``."""
    size = sum(len(str(r["content"])) for r in results)
    if size <= total:
        return
    each = total // max(1, len(results))
    for result in results:
        text = str(result["content"])
        if len(text) > each:
            result["content"] = text[:each] + f"\n[... {len(text) - each} more characters cut]"


def _delegates(cfg: WorkerConfig) -> str:
    return "\n".join(
        f"- {name}: model {d.model}, a task costs at most ${d.worst_nano / 1e9:.6f}"
        + ("" if d.priced else " (no price known)") for name, d in cfg.delegates.items()
    ) or "- none"
