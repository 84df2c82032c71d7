"""The CLI end to end, as a user runs it: up -d, status, logs, down, and the answers
it gives when something is wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from launcher.redis_server import EmbeddedRedis
from launcher.state import StateDir
from tests.harness.procs import cli_env, processes_under, wait_for
from tests.harness.swarm import SwarmRun, fast_spec, pool
from workers import keys


def test_up_detached_status_logs_down(make_swarm):
    swarm = make_swarm(fast_spec(pool("a", workers=2) + pool("b", workers=1)))
    up = swarm.cli("up", "-d", "swarm.yaml")
    assert up.returncode == 0, up.stderr
    assert "swarm 't' is up: 3 workers" in up.stdout
    # returned only once every worker had heartbeated
    view = json.loads(swarm.cli("status", "--json").stdout)
    assert view["state"] == "running" and view["responding"]
    assert view["pools"] == {"a": 2, "b": 1}
    rows = {r["slot"]: r for r in view["workers"]}
    assert sorted(rows) == ["a-1", "a-2", "b-1"]
    for row in rows.values():
        assert row["state"] == "idle"
        assert row["pid"] and row["generation"] == 1 and row["restarts"] == 0
        assert 0 <= row["heartbeat_age"] < 1.5
        assert row["done"] == 0 and row["failed"] == 0 and row["task"] is None

    table = swarm.cli("status")
    assert table.returncode == 0
    for needle in ("swarm t running", "a-1", "a-2", "b-1", "idle", "a (2 wanted)"):
        assert needle in table.stdout

    sup_log = swarm.cli("logs")
    assert sup_log.returncode == 0 and "start a-1#1" in sup_log.stdout
    worker_log = swarm.cli("logs", "a-2", "-n", "5")
    assert worker_log.returncode == 0 and "a-2#1 started pid=" in worker_log.stdout
    missing = swarm.cli("logs", "zz-9")
    assert missing.returncode == 2 and "no log for 'zz-9'" in missing.stderr

    again = swarm.cli("up", "-d", "swarm.yaml")
    assert again.returncode == 1
    assert "swarm 't' is already running (supervisor pid" in again.stderr

    down = swarm.cli("down")
    assert down.returncode == 0, down.stderr
    assert "swarm 't' is down." in down.stdout
    assert processes_under(swarm.folder) == []
    assert swarm.state.read_redis() is None

    after = swarm.cli("status")
    assert after.returncode == 1
    assert after.stderr.strip().startswith("swarm: swarm 't' is not running: stopped ")
    assert "Traceback" not in after.stderr + after.stdout
    assert swarm.cli("down").returncode == 1


def test_status_without_any_swarm_is_one_line(tmp_path: Path):
    swarm = SwarmRun(tmp_path, "pools: {}\n")
    result = swarm.cli("status")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no swarm found" in result.stderr and "Traceback" not in result.stderr


def test_status_of_a_killed_swarm_is_one_line(make_swarm):
    swarm = make_swarm(fast_spec(pool("a"))).start()
    os.kill(swarm.supervisor_pid(), 9)
    wait_for(lambda: swarm.state.live_pid() is None, 5, "the supervisor to die")
    wait_for(lambda: not any("redis-server" in " ".join(p.cmdline())
                             for p in processes_under(swarm.folder)), 5, "redis to go")
    result = swarm.cli("status")
    assert result.returncode == 1
    assert result.stderr.startswith("swarm: swarm 't' is not running")
    assert len(result.stderr.strip().splitlines()) == 1
    down = swarm.cli("down")  # cleans the stale state
    assert down.returncode == 1 and "is not running" in down.stderr
    assert swarm.state.read_redis() is None


def test_status_finds_the_swarm_through_SWARM_REDIS_URL(make_swarm, tmp_path: Path):
    swarm = make_swarm(fast_spec(pool("a"), name="remote"), name="remote").start()
    target = swarm.state.read_redis()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = target.url.removeprefix("unix://")
    env = {**cli_env(), "SWARM_REDIS_URL": f"unix://:{target.password}@{path}"}
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "launcher.cli", "status", "--json"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["swarm"] == "remote"


def test_up_against_an_existing_redis_url(tmp_path: Path, make_swarm):
    server_dir = StateDir(tmp_path / "server")
    server_dir.create()
    server = EmbeddedRedis(server_dir, tmp_path / "server.log")
    target = server.start()
    try:
        path = target.url.removeprefix("unix://")
        spec = fast_spec(pool("a", workers=2), name="ext",
                         extra="redis: unix://:${EXT_REDIS_PASSWORD}@" + path + "\n")
        os.environ["EXT_REDIS_PASSWORD"] = target.password
        try:
            swarm = make_swarm(spec, name="ext").start()
        finally:
            del os.environ["EXT_REDIS_PASSWORD"]
        client = target.sync()
        assert client.sismember(keys.REGISTRY, "ext")
        ids = [row["worker"] for row in swarm.workers().values()]
        assert len(ids) == 2 and all(client.exists(f"worker:status:{i}") for i in ids)
        recorded = json.loads(swarm.state.redis_file.read_text())
        assert recorded == {"url": f"unix://{path}", "embedded": False}
        assert target.password not in swarm.state.redis_file.read_text()
        swarm.proc.terminate()
        assert swarm.proc.wait(15) == 0
        assert client.ping(), "swarm down must not stop a Redis it did not start"
        assert client.hget(keys.meta("ext"), "state") == "stopped"
    finally:
        server.stop()


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "unix:///nonexistent/redis.sock"])
def test_unreachable_redis_is_one_line_and_exit_1(tmp_path: Path, url: str):
    swarm = SwarmRun(tmp_path, fast_spec(pool("a"), extra=f"redis: {url}\n"))
    result = swarm.cli("up", "swarm.yaml")
    assert result.returncode == 1
    assert result.stderr.startswith(f"swarm: cannot reach Redis at {url}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert processes_under(tmp_path) == []


def test_up_with_a_bad_spec_exits_2_with_file_line_and_field(tmp_path: Path):
    swarm = SwarmRun(tmp_path, "pools:\n  haiku:\n    model: m\n    workers: -1\n")
    result = swarm.cli("up", "swarm.yaml")
    assert result.returncode == 2
    assert result.stderr.strip() == "swarm: swarm.yaml:4: pools.haiku.workers: must be >= 0"
    assert not (tmp_path / ".swarm").exists(), "a bad spec must not leave state behind"
