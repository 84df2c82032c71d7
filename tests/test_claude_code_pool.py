"""Pools whose tasks run in Claude Code (``runtime: claude-code``): the real CLI from
claude-agent-sdk, in swarm's sandbox, its every call through the worker's metering
proxy to the fake API. The ledger against the fake's bill, escapes refused, and no
process left behind however a task ends."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import psutil
import pytest

from launcher import costs
from tests.harness.claude_code import MODEL, claude_code_script
from tests.harness.fake_api import Faults
from tests.harness.procs import wait_for
from tests.harness.swarm import api_env, fast_spec, pool
from workers import keys

pytest.importorskip("claude_agent_sdk")


def cc_pool(name: str = "cc", workers: int = 1, extra: str = "") -> str:
    return pool(name, workers=workers, model=MODEL, extra=(
        "runtime: claude-code\nworkdir: work\nconcurrency: 4\n" + extra))


def submit(swarm, texts: list[str], pool_name: str = "cc") -> list[str]:
    from launcher.client import Swarm as Api

    return Api(swarm.name, swarm.redis()).submit_many(texts, pool=pool_name)


def finished(swarm, ids: list[str]) -> bool:
    return all(swarm.redis().mget([keys.task_result(i) for i in ids]))


def findings_of(swarm, ids: list[str]) -> list[dict[str, Any]]:
    r = swarm.redis()
    return [json.loads(r.get(keys.finding(r.get(keys.task_result(i))))) for i in ids]


def assert_ledger_is_the_bill(swarm, fake_api) -> dict[str, int]:
    billed = fake_api.billed()
    total = costs.read_counters(swarm.redis(), swarm.name)["total"]["*"]
    assert total["calls"] == billed["responses"]
    for ours, theirs in (("input", "input_tokens"), ("output", "output_tokens"),
                         ("cache_write", "cache_creation_input_tokens"),
                         ("cache_read", "cache_read_input_tokens")):
        assert total.get(ours, 0) == billed[theirs], ours
    return total


@pytest.fixture
def work(tmp_path):
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


def cli_processes() -> list[psutil.Process]:
    """Claude Code CLIs and what they started, anywhere on the machine."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if "_bundled/claude" in line or "swarm-cc-sleep" in line:
            found.append(proc)
    return found


def test_a_task_writes_a_file_through_claude_code_and_the_ledger_is_the_bill(
        make_swarm, fake_api, work):
    fake_api.script = claude_code_script
    swarm = make_swarm(fast_spec(cc_pool()), env=api_env(fake_api)).start()
    ids = submit(swarm, [f"write notes-{i}.txt: hello {i}" for i in range(3)])
    wait_for(lambda: finished(swarm, ids), 120, "every task")
    found = findings_of(swarm, ids)
    for i, f in enumerate(found):
        assert f["status"] == "done", f["error"]
        assert (work / f"notes-{i}.txt").read_text() == f"hello {i}"
        assert f["files_changed"] == [f"notes-{i}.txt"]
        assert f["tool_calls"] == 1 and f["turns"] >= 2 and f["api_calls"] == 2
        assert f["result"].startswith("done")
    total = assert_ledger_is_the_bill(swarm, fake_api)
    assert total["calls"] == 6
    assert sum(f["cost_nano_usd"] for f in found) == total["nano"] > 0
    assert swarm.redis().hlen(keys.inflight("t")) == 0
    # its config and temp files are in the worker's folder under the state folder
    home = swarm.folder / ".swarm" / "t" / "claude" / "cc-1"
    assert (home / "config").is_dir() and any((home / "config").iterdir())
