"""`swarm mcp`: the swarm's tools served on stdio, driven by the MCP SDK's own client
(``stdio_client`` running ``python -P -m launcher.cli mcp`` in the swarm's folder, as
Claude Code runs the command it was given) against a real swarm and the fake Messages
API. Each test ends the server (the client's exit) and checks that it is gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.harness import lead_script as ls
from tests.harness.fake_api import FakeAPI, Reply, text_reply
from tests.harness.procs import PYTHON, cli_env, wait_for
from tests.harness.swarm import api_env, fast_spec, pool
from workers import keys

TOOLS = {"submit_task", "submit_tasks", "wait_for_task", "read_task", "read_finding",
         "search_findings", "start_run", "wait_for_run", "read_run", "list_runs",
         "list_tasks", "swarm_status", "swarm_cost"}


class Client:
    """An MCP session with `swarm mcp`: ``call`` returns (is_error, the answer's text)."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session

    async def call(self, tool: str, **args: Any) -> tuple[bool, str]:
        result = await self.session.call_tool(tool, args, read_timeout_seconds=120)
        text = "".join(getattr(block, "text", "") for block in result.content)
        return result.is_error, text

    async def ok(self, tool: str, **args: Any) -> dict[str, Any]:
        is_error, text = await self.call(tool, **args)
        assert not is_error, f"{tool}: {text}"
        answer: dict[str, Any] = json.loads(text)
        return answer

    async def error(self, tool: str, **args: Any) -> str:
        is_error, text = await self.call(tool, **args)
        assert is_error, f"{tool} answered instead of failing: {text[:500]}"
        assert "\n" not in text.strip() and "Traceback" not in text, text
        return text


@asynccontextmanager
async def served(folder: Path, env: dict[str, str] | None = None) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=PYTHON, args=["-P", "-m", "launcher.cli", "mcp"],
                                   env=cli_env(env), cwd=str(folder))
    with open(folder / "mcp.err", "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield Client(session)


def drive(folder: Path, steps: Callable[[Client], Awaitable[None]],
          env: dict[str, str] | None = None) -> None:
    """Run ``steps`` against a server started in ``folder``; then no server is left."""
    async def main() -> None:
        async with served(folder, env) as client:
            await steps(client)

    anyio.run(main)
    wait_for(lambda: not servers(), 10, "the MCP server to exit")


def servers() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "mcp" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.Error:
            pass
    return found


def start(make_swarm: Any, fake_api: FakeAPI, pools: str, extra: str = "") -> Any:
    return make_swarm(fast_spec(pools, extra=extra), env=api_env(fake_api)).start()


# --- the tools, a task's round trip, reading and searching findings ----------------------


@pytest.mark.timeout(120)
def test_tools_and_a_task_from_submit_to_its_finding(make_swarm: Any, fake_api: FakeAPI) -> None:
    long_answer = "\n".join(f"line {i}: the gizmo module is fine" for i in range(400))

    def script(req: dict[str, Any]) -> Reply:
        task = ls.task_text(req)
        return text_reply(long_answer if "LONG" in task else f"done: {task[:60]}")

    fake_api.script = script
    swarm = start(make_swarm, fake_api, pool("haiku", workers=2))

    async def steps(client: Client) -> None:
        listed = await client.session.list_tools()
        assert {t.name for t in listed.tools} == TOOLS
        wait_tool = next(t for t in listed.tools if t.name == "wait_for_task")
        assert wait_tool.description and "finding" in wait_tool.description
        timeout = wait_tool.input_schema["properties"]["timeout_s"]
        assert timeout["maximum"] == 600 and timeout["default"] == 120

        task_id = (await client.ok("submit_task", text="LONG review of the gizmo module",
                                   pool="haiku"))["task_id"]
        finding = await client.ok("wait_for_task", task_id=task_id, timeout_s=60)
        assert finding["task_id"] == task_id and finding["status"] == "done"
        assert finding["result"] == long_answer[:4000]  # cut, and says where the rest is
        assert finding["result_chars"] == len(long_answer)
        assert finding["result_next_offset"] == 4000 and "read_finding" in finding["result_rest"]
        fid = finding["finding_id"]

        page = await client.ok("read_finding", finding_id=fid, offset=4000, max_chars=5000)
        assert page["result"] == long_answer[4000:9000]
        whole = await client.ok("read_finding", finding_id=fid)
        assert whole["result"] == long_answer[:20000] and whole["task"].startswith("LONG")

        ids = (await client.ok("submit_tasks", texts=["say alpha", "say beta"]))["task_ids"]
        assert len(ids) == 2
        for task_id_, word in zip(ids, ("alpha", "beta")):
            got = await client.ok("wait_for_task", task_id=task_id_, timeout_s=60)
            assert got["result"] == f"done: say {word}"
        record = await client.ok("read_task", task_id=ids[0])
        assert record["state"] == "done" and record["finding"]["result"] == "done: say alpha"

        found = await client.ok("search_findings", query="gizmo")
        assert [f["finding_id"] for f in found["findings"]] == [fid]
        assert {"task_id", "status", "pool", "excerpt"} <= set(found["findings"][0])

        status = await client.ok("swarm_status")
        assert status["state"] == "running" and status["tasks"]["done"] == 3
        assert sum(status["workers_by_pool"]["haiku"].values()) == 2
        tasks = await client.ok("list_tasks", state="done", limit=10)
        assert {t["id"] for t in tasks["tasks"]} == {task_id, *ids}
        cost = await client.ok("swarm_cost", by="pool")
        assert cost["rows"][-1]["kind"] == "total" and cost["rows"][-1]["calls"] == 3

    drive(swarm.folder, steps)


# --- errors: one line each, and the server goes on ---------------------------------------


@pytest.mark.timeout(120)
def test_errors_are_tool_errors_and_the_server_goes_on(make_swarm: Any, fake_api: FakeAPI) -> None:
    release = threading.Event()

    async def script(req: dict[str, Any]) -> Reply:
        if "SLOW" in ls.task_text(req):
            await asyncio.to_thread(release.wait, 60)
        return text_reply("ok")

    fake_api.script = script
    swarm = start(make_swarm, fake_api, pool("haiku"))

    async def steps(client: Client) -> None:
        said = await client.error("wait_for_task", task_id="task_nope", timeout_s=1)
        assert "no task 'task_nope'" in said
        assert "no finding 'finding_nope'" in await client.error("read_finding",
                                                                 finding_id="finding_nope")
        assert "no run 'run_nope'" in await client.error("read_run", run_id="run_nope")
        assert "no run 'run_nope'" in await client.error("wait_for_run", run_id="run_nope")
        # bad arguments: the schema's bounds, a missing argument, a wrong type, a bad value
        assert "timeout_s" in await client.error("wait_for_task", task_id="x", timeout_s=9999)
        assert "text" in await client.error("submit_task")
        assert "texts" in await client.error("submit_tasks", texts=[])
        assert "limit" in await client.error("search_findings", query="x", limit="many")
        assert "has no pool 'nope'" in await client.error("submit_task", text="hi", pool="nope")
        assert "since" in await client.error("swarm_cost", since="yesterday")
        assert "has no lead pool" in await client.error("start_run", goal="plan it")
        await client.error("no_such_tool")
        # a timeout says so, with the task's state; the task goes on
        slow = (await client.ok("submit_task", text="SLOW one"))["task_id"]
        wait_for(lambda: swarm.redis().hget(keys.task_meta("t", slow), "state") == "running",
                 20, "the slow task to run")
        said = await client.error("wait_for_task", task_id=slow, timeout_s=1.5)
        assert f"task {slow} has no finding after 1.5s (state running)" in said
        release.set()
        assert (await client.ok("wait_for_task", task_id=slow, timeout_s=30))["result"] == "ok"
        assert (await client.ok("swarm_status"))["tasks"]["done"] == 1

    try:
        drive(swarm.folder, steps)
    finally:
        release.set()


@pytest.mark.timeout(120)
def test_starts_before_the_swarm_and_finds_it_once_up(make_swarm: Any, fake_api: FakeAPI) -> None:
    swarm = make_swarm(fast_spec(pool("haiku")), env=api_env(fake_api))

    async def steps(client: Client) -> None:
        assert "no swarm found" in await client.error("swarm_status")
        assert "no swarm found" in await client.error("submit_task", text="early")
        await anyio.to_thread.run_sync(swarm.start)
        task_id = (await client.ok("submit_task", text="now"))["task_id"]
        assert (await client.ok("wait_for_task", task_id=task_id))["result"] == "done: now"
        await anyio.to_thread.run_sync(lambda: swarm.cli("down", timeout=60))
        said = await client.error("swarm_status")
        assert "not running" in said or "does not answer" in said, said

    drive(swarm.folder, steps)


# --- a run: a goal for the lead, from start to its synthesis -------------------------------


@pytest.mark.timeout(150)
def test_a_run_from_start_to_its_synthesis(make_swarm: Any, fake_api: FakeAPI) -> None:
    def script(req: dict[str, Any]) -> Reply:
        if not ls.is_lead(req):
            return ls.worker_answer(req, "the answer is 7")
        if len(req["messages"]) == 1:
            return ls.hand_out(("COUNT the modules", "a number"))
        seen = ls.findings_shown(req)
        return ls.synthesis("There are 7.", list(seen)) if seen else ls.wait()

    fake_api.script = script
    lead = pool("lead", model="lead-model", extra="role: lead\ndelegates_to: [cheap]\n"
                "concurrency: 2\nmax_tokens: 2000\n")
    swarm = start(make_swarm, fake_api, pool("cheap", extra="max_tokens: 1000\n") + lead,
                  extra="prices:\n  test-model: {input: 1, output: 5}\n"
                        "  lead-model: {input: 0.3, output: 1.5}\n")

    async def steps(client: Client) -> None:
        run_id = (await client.ok("start_run", goal="how many modules?", budget_usd=1.5))[
            "run_id"]
        info = await client.ok("wait_for_run", run_id=run_id, timeout_s=90)
        assert info["id"] == run_id and info["state"] == "done"
        assert info["budget_usd"] == 1.5 and info["spent_usd"] > 0
        assert [t["state"] for t in info["tasks"]] == ["done"]
        assert info["result"]["result"].startswith("There are 7. [finding_")
        assert info["result"]["citations"] == [info["tasks"][0]["finding"]]
        again = await client.ok("read_run", run_id=run_id)
        assert again["result"]["finding_id"] == info["result"]["finding_id"]
        runs = await client.ok("list_runs")
        assert [r["id"] for r in runs["runs"]] == [run_id]
        by_run = await client.ok("swarm_cost", by="run")
        assert by_run["rows"][0]["key"] == run_id

    drive(swarm.folder, steps)


@pytest.mark.timeout(60)
def test_the_sdk_is_no_import_of_the_other_commands() -> None:
    """`swarm status` and the rest never import the MCP SDK (it is only `swarm mcp`'s)."""
    code = "import sys, launcher.cli; print(any(m.split('.')[0] == 'mcp' for m in sys.modules))"
    done = subprocess.run([PYTHON, "-P", "-c", code], env=cli_env(), capture_output=True,
                          text=True, timeout=60, cwd=os.sep)
    assert done.stdout.strip() == "False", done.stderr
