"""A swarm's history outlives it (issue 15): after `swarm down`, `status`, `tasks`, `show`,
`cost` and `runs` answer from what it left, the same as before, without writing it;
the commands that change things still say it is not running. Two stopped swarms in one
folder; an external Redis; a `submit --wait` whose swarm is stopped under it.

Real swarms (supervisor, forked workers, the embedded Redis) against the fake Messages
API, driven through the `swarm` command as a user runs it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from launcher.redis_server import EmbeddedRedis
from launcher.state import StateDir
from tests.harness import lead_script as ls
from tests.harness.fake_api import FakeAPI, Reply, text_reply
from tests.harness.procs import SWARM_CLI, cli_env, processes_under, wait_for
from tests.harness.swarm import SwarmRun, api_env, fast_spec, pool

pytestmark = pytest.mark.timeout(150)

AGO = re.compile(r" \(\d+ (s|min|h|d) ago\)")
PRICES = ("prices:\n  test-model: {input: 1, output: 5}\n"
          "  lead-model: {input: 0.3, output: 1.5}\n")


def data_hashes(state: StateDir) -> dict[str, str]:
    """Every file of the embedded Redis's data folder and its sha256."""
    return {str(p.relative_to(state.redis_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(state.redis_dir.rglob("*")) if p.is_file()}


def answer(swarm: SwarmRun, *args: str) -> Any:
    done = swarm.cli(*args)
    assert done.returncode == 0, (args, done.stderr)
    return json.loads(done.stdout)


def one_line_failure(swarm: SwarmRun, *args: str) -> str:
    done = swarm.cli(*args)
    assert done.returncode == 1, (args, done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    return done.stderr.strip()


def history_servers() -> list[psutil.Process]:
    """The private servers of `launcher/history.py` still running (there should be none)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any("swarm-history-" in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def test_after_down_the_reads_answer_as_before_and_nothing_is_written(
        make_swarm: Any, fake_api: FakeAPI) -> None:
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
    swarm = make_swarm(fast_spec(pool("cheap", extra="max_tokens: 1000\n") + lead,
                                 extra=PRICES), env=api_env(fake_api)).start()
    task = answer(swarm, "submit", "count the files", "--wait", "--json")
    run = answer(swarm, "run", "how many modules?", "--budget", "1", "--wait", "--json")
    assert run["state"] == "done"
    reads = [("cost", "--json"), ("cost", "--by", "run", "--json"), ("tasks", "--json"),
             ("show", task["task_id"], "--json"), ("show", run["id"], "--json"),
             ("runs", "--json")]
    before = {args: answer(swarm, *args) for args in reads}
    assert before[("cost", "--json")]["rows"][-1]["cost_usd"] > 0
    assert len(before[("tasks", "--json")]) == 3  # the task, the run, the run's task

    down = swarm.cli("down")
    assert down.returncode == 0, down.stderr
    assert swarm.state.read_redis() is None and processes_under(swarm.folder) == []
    data = data_hashes(swarm.state)
    assert data, "the embedded Redis left no data"

    for attempt in ("first read: replays the data", "later reads: from the snapshot"):
        for args in reads:
            assert answer(swarm, *args) == before[args], (attempt, args)
        said = one_line_failure(swarm, "status")
        assert said.startswith("swarm: swarm 't' is not running: stopped 20"), said
        assert "tasks 3 done, 0 failed; 1 run; spent $" in said, said
        assert AGO.sub("", one_line_failure(swarm, "status", "--json")) == AGO.sub("", said)
        assert list(swarm.state.history_dir.glob("*.rdb")), "no snapshot saved"

    for args in (("submit", "more"), ("run", "again"), ("resume",), ("scale", "cheap", "2"),
                 ("down",)):
        assert one_line_failure(swarm, *args) == "swarm: swarm 't' is not running", args
    assert data_hashes(swarm.state) == data, "reading the history changed the swarm's data"
    assert swarm.state.read_redis() is None and processes_under(swarm.folder) == []
    assert history_servers() == []


def test_a_waiting_submit_whose_swarm_is_stopped_says_so(make_swarm: Any,
                                                         fake_api: FakeAPI) -> None:
    release = threading.Event()

    async def script(req: dict[str, Any]) -> Reply:
        await asyncio.to_thread(release.wait, 60)
        return text_reply("too late")

    fake_api.script = script
    swarm = make_swarm(fast_spec(pool("a")), env=api_env(fake_api)).start()
    try:
        waiting = subprocess.Popen([*SWARM_CLI, "submit", "slow", "--wait"], cwd=swarm.folder,
                                   env=cli_env(swarm.env), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        try:
            wait_for(lambda: fake_api.received(), 30, "the task to reach the API")
            down = swarm.cli("down", "--now")
            assert down.returncode == 0, down.stderr
            out, err = waiting.communicate(timeout=30)
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait()
    finally:
        release.set()
    assert waiting.returncode == 1, (out, err)
    assert err.strip() == "swarm: swarm 't' stopped while this command was using it", err
    assert out == ""


def test_two_stopped_swarms_in_one_folder(make_swarm: Any, fake_api: FakeAPI) -> None:
    def spec(name: str) -> str:
        return fast_spec(pool("a"), name=name, extra=f"logs: {{dir: logs/{name}}}\n")

    first = make_swarm(spec("one"), name="one", env=api_env(fake_api)).start()
    second = make_swarm(spec("two"), name="two", env=api_env(fake_api)).start()
    assert "choose one with --swarm NAME" in first.cli("status").stderr  # both run
    sent = answer(first, "submit", "for one", "--wait", "--json", "--swarm", "one")
    for name in ("two", "one"):  # 'one' stops last
        assert first.cli("down", "--swarm", name).returncode == 0

    said = one_line_failure(first, "status")
    assert said.startswith("swarm: swarm 'one' is not running: stopped "), said
    assert said.endswith("; also here, not running: two (--swarm NAME)"), said
    assert "tasks 1 done" in said
    other = one_line_failure(first, "status", "--swarm", "two")
    assert other.startswith("swarm: swarm 'two' is not running: stopped "), other
    assert "tasks 0 done" in other and "also here" not in other
    assert answer(first, "cost", "--json")["swarm"] == "one"
    assert answer(first, "cost", "--json", "--swarm", "two")["swarm"] == "two"
    assert [t["id"] for t in answer(first, "tasks", "--json")] == [sent["task_id"]]
    assert one_line_failure(first, "submit", "x") == "swarm: swarm 'one' is not running"


def test_a_stopped_swarm_on_an_external_redis(tmp_path: Path, make_swarm: Any,
                                              fake_api: FakeAPI) -> None:
    server_dir = StateDir(tmp_path / "server")
    server_dir.create()
    server = EmbeddedRedis(server_dir, tmp_path / "server.log")
    target = server.start()
    try:
        path = target.url.removeprefix("unix://")
        spec = fast_spec(pool("a"), name="ext", extra=PRICES + "redis: unix://:"
                         "${EXT_REDIS_PASSWORD}@" + path + "\n")
        swarm = make_swarm(spec, name="ext", env={**api_env(fake_api),
                                                  "EXT_REDIS_PASSWORD": target.password or ""})
        swarm.start()
        task = answer(swarm, "submit", "on the shared server", "--wait", "--json")
        before = answer(swarm, "cost", "--json")
        assert swarm.cli("down").returncode == 0
        assert swarm.state.read_redis() is None
        swarm.env.pop("EXT_REDIS_PASSWORD")  # read from what the swarm kept, not the spec
        assert answer(swarm, "cost", "--json") == before
        assert answer(swarm, "show", task["task_id"], "--json")["state"] == "done"
        said = one_line_failure(swarm, "status")
        assert said.startswith("swarm: swarm 'ext' is not running: stopped "), said
        assert one_line_failure(swarm, "submit", "x") == "swarm: swarm 'ext' is not running"
        assert not swarm.state.redis_dir.exists() and history_servers() == []
        assert os.stat(swarm.state.last_password_file).st_mode & 0o077 == 0
    finally:
        server.stop()
