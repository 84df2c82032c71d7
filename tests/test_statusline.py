"""`swarm statusline`: one line for Claude Code's status bar, run as Claude Code runs it
(its session's JSON on stdin). Against a real swarm its numbers are `swarm status
--json`'s and `swarm cost --json`'s; without one it still prints a line and exits 0,
never waiting long on a Redis that does not answer or on a stdin that never ends."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from launcher.state import StateDir
from tests.harness import lead_script as ls
from tests.harness.fake_api import FakeAPI, Reply, error_reply, text_reply
from tests.harness.procs import SWARM_CLI, cli_env, wait_for
from tests.harness.swarm import api_env, fast_spec, pool
from workers import keys
from workers.redis_target import RedisTarget

SESSION = json.dumps({"model": {"display_name": "Opus"}, "workspace": {"current_dir": "/"}})
LINE = re.compile(r"swarm (\S+) \| (.+) \| (\d+) queued, (\d+) running, (\d+) done, "
                  r"(\d+) failed \| \$(\d+\.\d+)(?: of \$(\S+))?$")


def statusline(folder: Path, env: dict[str, str] | None = None, stdin: Any = None,
               text: str | None = SESSION) -> tuple[str, float]:
    """Run `swarm statusline` in ``folder``; its one line and its wall time. It must
    exit 0 and say nothing on stderr."""
    t0 = time.perf_counter()
    done = subprocess.run([*SWARM_CLI, "statusline"], cwd=folder, env=cli_env(env),
                          input=text if stdin is None else None, stdin=stdin,
                          capture_output=True, text=True, timeout=30)
    took = time.perf_counter() - t0
    assert done.returncode == 0 and done.stderr == "", (done.returncode, done.stderr)
    assert done.stdout.endswith("\n") and done.stdout.count("\n") == 1, done.stdout
    return done.stdout.strip(), took


@pytest.mark.timeout(120)
def test_the_line_says_what_status_and_cost_say(make_swarm: Any, fake_api: FakeAPI) -> None:
    release = threading.Event()

    async def script(req: dict[str, Any]) -> Reply:
        task = ls.task_text(req)
        if "SLOW" in task:
            await asyncio.to_thread(release.wait, 60)
        return error_reply(400) if "FAIL" in task else text_reply("fine")

    fake_api.script = script
    spec = fast_spec(pool("haiku", workers=3), extra="budget_usd: ${BUDGET:-5}  # a cap\n"
                     "prices:\n  test-model: {input: 1, output: 5}\n")
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    try:
        for text in ("FAIL one", "fine one", "fine two"):
            assert swarm.cli("submit", text).returncode == 0
        wait_for(lambda: [swarm.status()["tasks"][s] for s in ("done", "failed")] == [2, 1],
                 30, "two tasks done and one failed")
        # (last: its first call would hold the cold cache prefix the others wait for)
        assert swarm.cli("submit", "SLOW one").returncode == 0
        wait_for(lambda: sorted(r["state"] for r in swarm.status()["workers"]) ==
                 ["busy", "idle", "idle"], 10, "one worker busy, two idle")
        line, _ = statusline(swarm.folder)
        status = json.loads(swarm.cli("status", "--json").stdout)
        cost = json.loads(swarm.cli("cost", "--json").stdout)
        found = LINE.match(line)
        assert found, line
        name, workers, queued, running, done, failed, spent, cap = found.groups()
        assert name == status["swarm"] == "t"
        assert sorted(row["state"] for row in status["workers"]) == ["busy", "idle", "idle"]
        assert workers == "1 busy, 2 idle"
        tasks = status["tasks"]
        assert [int(n) for n in (queued, running, done, failed)] == \
            [tasks["queued"], tasks["running"], tasks["done"], tasks["failed"]] == [0, 1, 2, 1]
        total = next(r for r in cost["rows"] if r["kind"] == "total")
        assert total["cost_usd"] > 0 and spent == f"{total['cost_usd']:.4f}"
        assert cap == "5"
        # the `swarm` command's own entry point takes the short way, to the same line
        fast = subprocess.run([sys.executable, "-P", "-m", "launcher.entry", "statusline"],
                              cwd=swarm.folder, env=cli_env(), input=SESSION,
                              capture_output=True, text=True, timeout=30)
        assert fast.returncode == 0 and fast.stdout.strip() == line, (fast.stdout, line)
        # a paused swarm says so
        swarm.redis().set(keys.paused(swarm.name), "budget reached: the swarm spent")
        assert statusline(swarm.folder)[0].endswith("| PAUSED: budget reached: the swarm spent")
    finally:
        release.set()
    swarm.cli("down", timeout=60)
    assert statusline(swarm.folder)[0] == "swarm t: not running"


@pytest.mark.timeout(60)
def test_no_swarm_a_gone_redis_and_a_silent_one(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert statusline(empty)[0] == "swarm: no swarm here"
    # a state folder whose Redis is gone (a supervisor killed with its Redis)
    gone = tmp_path / "gone"
    state = StateDir(gone / ".swarm" / "t")
    state.create()
    state.write_redis(RedisTarget(f"unix://{gone}/redis.sock", "pw"), embedded=True)
    line, _ = statusline(gone)
    assert line.startswith("swarm t: not running ("), line
    # a Redis that takes the connection and never answers: half a second, not forever
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        line, took = statusline(empty, {"SWARM_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    assert line.startswith("swarm: Redis does not answer"), line
    assert took < 10, took  # (the line's own wait is 0.5 s; the rest is start-up)


@pytest.mark.timeout(60)
def test_stdin_a_terminal_or_a_pipe_left_open_never_blocks(tmp_path: Path) -> None:
    primary, secondary = pty.openpty()
    try:
        line, took = statusline(tmp_path, stdin=secondary, text=None)
    finally:
        os.close(primary)
        os.close(secondary)
    assert line == "swarm: no swarm here" and took < 10
    proc = subprocess.Popen([*SWARM_CLI, "statusline"], cwd=tmp_path, env=cli_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.wait(timeout=20) == 0  # stdin still open, nothing written to it
        assert proc.stdout.read() == "swarm: no swarm here\n"
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
