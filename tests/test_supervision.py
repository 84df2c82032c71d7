"""Supervision with real processes: crashes, hangs, give-ups, memory, orphans, stops."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from launcher.state import pid_alive
from tests.harness.procs import processes_under, wait_for
from tests.harness.swarm import fast_spec, pool
from workers import keys


def test_sigkilled_worker_is_replaced_with_same_id_and_next_generation(make_swarm):
    swarm = make_swarm(fast_spec(pool("a", workers=2))).start()
    before = swarm.workers()
    victim, bystander = before["a-1"], before["a-2"]
    os.kill(victim["pid"], signal.SIGKILL)

    def replaced():
        row = swarm.workers()["a-1"]
        return row if row["pid"] != victim["pid"] and row["state"] == "idle" else None

    after = wait_for(replaced, 5, "a-1 to be replaced")
    assert after["generation"] == victim["generation"] + 1
    assert after["restarts"] == 1
    assert "SIGKILL" in after["last_exit"]
    assert swarm.workers()["a-2"]["pid"] == bystander["pid"], "the other worker was touched"
    exits = [e for e in swarm.events("exit") if e["slot"] == "a-1"]
    assert exits and "killed by SIGKILL" in exits[0]["reason"]
    assert [e for e in swarm.events("restart") if e["slot"] == "a-1"]
    assert not pid_alive(victim["pid"])


def test_stopped_worker_is_found_hung_killed_and_replaced(make_swarm):
    swarm = make_swarm(fast_spec(pool("a", workers=2, expiry="1500ms", interval="300ms")))
    swarm.start()
    victim = swarm.workers()["a-1"]
    os.kill(victim["pid"], signal.SIGSTOP)
    stopped_at = time.monotonic()

    def replaced():
        row = swarm.workers()["a-1"]
        return row if row["pid"] != victim["pid"] and row["state"] == "idle" else None

    after = wait_for(replaced, 10, "the hung a-1 to be replaced")
    took = time.monotonic() - stopped_at
    assert took >= 1.0, f"replaced after {took:.2f}s: before its heartbeat could expire"
    assert after["last_exit"].startswith("hung: no heartbeat for 1.5s")
    hang = [e for e in swarm.events("hang") if e["slot"] == "a-1"]
    assert len(hang) == 1 and hang[0]["pid"] == str(victim["pid"])
    assert not pid_alive(victim["pid"])
    # SIGABRT + SIGCONT let the hung worker dump its stack into its own log first
    log = (swarm.folder / "logs" / "a-1.log").read_text()
    assert "Fatal Python error: Aborted" in log and "File " in log
    assert swarm.workers()["a-2"]["restarts"] == 0


def test_slot_that_always_crashes_ends_fatal_while_the_rest_keep_running(make_swarm):
    spec = fast_spec(
        pool("good", workers=1)
        + pool("bad", workers=1, max_restarts=2, extra="on_start: tests.harness.hooks:crash\n")
    )
    swarm = make_swarm(spec).start(ready=False)
    wait_for(lambda: swarm.workers().get("bad-1", {}).get("state") == "fatal", 15,
             "bad-1 to be given up on")
    rows = swarm.workers()
    assert rows["bad-1"]["restarts"] == 2
    assert "exit code 3 (failed to boot)" in rows["bad-1"]["last_exit"]
    assert rows["good-1"]["state"] == "idle" and rows["good-1"]["restarts"] == 0
    fatal = swarm.events("fatal")
    assert [e["slot"] for e in fatal] == ["bad-1"]
    log = (swarm.folder / "logs" / "bad-1.log").read_text()
    assert "RuntimeError: this worker always fails to boot" in log
    time.sleep(1.0)  # a FATAL slot stays down; the supervisor is still serving the rest
    assert swarm.workers()["bad-1"]["pid"] is None
    assert swarm.proc.poll() is None


def test_worker_over_its_memory_limit_is_restarted_alone(make_swarm):
    spec = fast_spec(
        pool("lean", workers=1)
        + pool("fat", workers=1, max_restarts=1,
               extra="memory_limit: 150MiB\non_start: tests.harness.hooks:hog_memory\n"
                     "env: {SWARM_TEST_HOG_MB: '250'}\n")
    )
    swarm = make_swarm(spec).start(ready=False)
    lean_pid = wait_for(lambda: swarm.workers()["lean-1"]["pid"], 10, "lean-1")
    kills = wait_for(lambda: swarm.events("memory_kill"), 15, "a memory kill")
    assert kills[0]["slot"] == "fat-1"
    assert "over limit 157286400" in kills[0]["reason"]
    wait_for(lambda: swarm.workers()["fat-1"]["restarts"] >= 1, 10, "fat-1 to restart")
    assert swarm.workers()["lean-1"]["pid"] == lean_pid
    assert swarm.workers()["lean-1"]["restarts"] == 0


def test_killing_the_supervisor_leaves_no_worker_alive(make_swarm, tmp_path: Path):
    pids_file = tmp_path / "children.txt"
    spec = fast_spec(pool("a", workers=3, extra=(
        "on_start: tests.harness.hooks:spawn_child\n"
        f"env: {{SWARM_TEST_CHILD_PIDS: '{pids_file}'}}\n")))
    swarm = make_swarm(spec).start()
    workers = [row["pid"] for row in swarm.workers().values()]
    grandchildren = [int(p) for p in pids_file.read_text().split()]
    assert len(workers) == 3 and len(grandchildren) == 3
    os.kill(swarm.supervisor_pid(), signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: not any(pid_alive(p) for p in workers), 2.5, "every worker to exit")
    took = time.monotonic() - killed_at
    assert took < 2.0, f"workers outlived their supervisor by {took:.2f}s"
    # the embedded Redis got SIGTERM (not SIGKILL) so it can flush its append-only file
    wait_for(lambda: not [p for p in processes_under(swarm.folder)
                          if "redis-server" in " ".join(p.cmdline())], 5, "Redis to exit")
    assert not [p for p in processes_under(swarm.folder) if p.pid in workers]


def test_sigterm_stops_gracefully_and_leaves_nothing_running(make_swarm, tmp_path: Path):
    pids_file = tmp_path / "children.txt"
    spec = fast_spec(pool("a", workers=2, extra=(
        "on_start: tests.harness.hooks:spawn_child\n"
        f"env: {{SWARM_TEST_CHILD_PIDS: '{pids_file}'}}\n")))
    swarm = make_swarm(spec).start()
    socket_path = Path(swarm.state.read_redis().url.removeprefix("unix://"))
    grandchildren = [int(p) for p in pids_file.read_text().split()]
    swarm.proc.send_signal(signal.SIGTERM)
    assert swarm.proc.wait(15) == 0
    assert processes_under(swarm.folder) == []
    assert not any(pid_alive(p) for p in grandchildren)
    assert not socket_path.exists()
    assert swarm.state.live_pid() is None and swarm.state.read_redis() is None
    exits = [line for line in (swarm.folder / "logs" / "supervisor.log").read_text().splitlines()
             if " exit a-" in line]
    assert len(exits) == 2 and all("clean=True" in line for line in exits)


def test_scale_adds_and_retires_without_touching_others(make_swarm):
    swarm = make_swarm(fast_spec(pool("a", workers=2) + pool("b", workers=1))).start()
    before = {w: row["pid"] for w, row in swarm.workers().items()}
    result = swarm.cli("scale", "a", "4")
    assert result.returncode == 0, result.stderr
    assert "a: 2 -> 4 workers" in result.stdout
    wait_for(lambda: len([r for r in swarm.workers().values() if r["state"] == "idle"]) == 5,
             10, "two more workers")
    rows = swarm.workers()
    assert {w: rows[w]["pid"] for w in before} == before
    result = swarm.cli("scale", "a", "1")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: sorted(swarm.workers()) == ["a-1", "b-1"], 10, "a-2..a-4 to retire")
    assert swarm.workers()["a-1"]["pid"] == before["a-1"]
    assert swarm.workers()["b-1"]["pid"] == before["b-1"]
    assert not pid_alive(before["a-2"])
    retired = [line for line in (swarm.folder / "logs" / "supervisor.log").read_text().splitlines()
               if " exit a-2" in line]
    assert retired and "clean=True" in retired[0]
    bad = swarm.cli("scale", "nope", "3")
    assert bad.returncode == 2 and "has no pool 'nope'" in bad.stderr


def test_embedded_redis_requires_password_and_has_no_tcp_port(make_swarm):
    import redis as redis_lib

    swarm = make_swarm(fast_spec(pool("a"))).start()
    target = swarm.state.read_redis()
    socket_path = target.url.removeprefix("unix://")
    assert oct(os.stat(swarm.state.path).st_mode & 0o777) == "0o700"
    assert oct(os.stat(swarm.state.password_file).st_mode & 0o777) == "0o600"
    with pytest.raises(redis_lib.AuthenticationError):
        redis_lib.Redis(unix_socket_path=socket_path, protocol=2).get("x")
    client = swarm.redis()
    assert client.config_get("port")["port"] == "0"
    assert client.config_get("appendonly")["appendonly"] == "yes"
    redis_pid = int(client.info("server")["process_id"])
    assert not [c for c in psutil.Process(redis_pid).net_connections("inet")
                if c.status == psutil.CONN_LISTEN]
    # the heartbeat is the seed's: an ISO timestamp under worker:status:{id}, with a TTL,
    # and the id is unique on the Redis: swarm, host and slot
    row = swarm.workers()["a-1"]
    assert row["worker"] == f"t/{row['host']}/a-1"
    value = client.get(keys.heartbeat(row["worker"]))
    assert value and value[:2] == "20" and "T" in value
    assert 0 < client.pttl(keys.heartbeat(row["worker"])) <= 1500


def test_supervisor_checks_all_heartbeats_in_one_round_trip(make_swarm):
    """One MGET per tick however many workers: count the commands Redis served."""
    swarm = make_swarm(fast_spec(pool("a", workers=6, expiry="6s", interval="2s"))).start()
    client = swarm.redis()
    client.config_resetstat()
    time.sleep(3.0)
    stats = client.info("commandstats")
    mget = stats.get("cmdstat_mget", {}).get("calls", 0)
    assert 4 <= mget <= 12, f"{mget} MGETs in 3s with a 0.5s tick"
    # the only GETs are the workers' own, one per beat (the swarm's pause flag)
    get_calls = stats.get("cmdstat_get", {}).get("calls", 0)
    beats = stats.get("cmdstat_set", {}).get("calls", 0)
    assert get_calls <= beats, f"{get_calls} GETs for {beats} beats: heartbeats read one by one"
    assert stats.get("cmdstat_exists", {}).get("calls", 0) == 0
    assert stats.get("cmdstat_pttl", {}).get("calls", 0) == 0


def test_embedded_redis_killed_comes_back_from_its_append_only_file(make_swarm):
    swarm = make_swarm(fast_spec(pool("a", workers=2, expiry="1500ms", interval="300ms")))
    swarm.start()
    client = swarm.redis()
    client.set("survivor", "kept")
    time.sleep(1.2)  # appendfsync everysec
    pids = {w: row["pid"] for w, row in swarm.workers().items()}
    old_redis = int(client.info("server")["process_id"])
    os.kill(old_redis, signal.SIGKILL)
    restarted = wait_for(lambda: swarm.events("redis_restart"), 10, "Redis to be restarted")
    assert int(restarted[0]["pid"]) != old_redis
    assert swarm.redis().get("survivor") == "kept"
    wait_for(swarm.all_beating, 5, "the workers to beat again")
    time.sleep(2.0)  # longer than the expiry: nobody may be taken for hung
    assert {w: row["pid"] for w, row in swarm.workers().items()} == pids
    assert swarm.events("hang") == []


def test_worker_whose_event_loop_is_blocked_is_found_hung(make_swarm):
    spec = fast_spec(pool("a", workers=1, extra="on_start: tests.harness.hooks:block_loop_soon\n"))
    swarm = make_swarm(spec).start()
    first = swarm.workers()["a-1"]
    assert psutil.Process(first["pid"]).status() != psutil.STATUS_STOPPED
    hang = wait_for(lambda: swarm.events("hang"), 10, "the blocked worker to be found hung")
    assert hang[0]["pid"] == str(first["pid"])
    # the stack it dumped shows the loop stuck inside a callback (our time.sleep)
    log = (swarm.folder / "logs" / "a-1.log").read_text()
    assert "Fatal Python error: Aborted" in log
    assert "asyncio/events.py" in log.split("Fatal Python error: Aborted")[1].splitlines()[3]
