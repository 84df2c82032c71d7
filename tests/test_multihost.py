"""One Redis, several hosts and several swarms: nothing run twice, nothing lost, nobody
killed by mistake. Hosts are separate folders under separate host names; as root, each
is also a process tree with its own hostname and pid namespace (tests/harness/hosts.py)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from launcher import costs
from launcher.client import Swarm as Api
from launcher.status import collect
from tests.harness.fake_api import last_user_text, text_reply
from tests.harness.hosts import Host, SharedRedis, pool_text, spec_for
from tests.harness.procs import processes_under, wait_for
from tests.harness.swarm import api_env
from workers import keys


@pytest.fixture
def shared(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = SharedRedis(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture
def hosts(tmp_path: Path, fake_api: Any, shared: SharedRedis):  # type: ignore[no-untyped-def]
    made: list[Host] = []

    def make(name: str, spec: str, folder: str | None = None, **kw: Any) -> Host:
        host = Host(tmp_path / (folder or name), name, spec, shared.url,
                    env=api_env(fake_api), **kw)
        made.append(host)
        return host

    yield make
    for host in made:
        host.stop()


def paced(request: dict[str, Any]) -> Any:
    """'slow N ...' answers after N seconds; anything else at once."""
    text = last_user_text(request)
    words = text.split()
    delay = float(words[1]) if words[:1] == ["slow"] else 0.0
    return text_reply(f"did: {text}", delay=delay)


def asked(fake_api: Any) -> Counter[str]:
    """How many requests the fake API served for each task text."""
    return Counter(last_user_text(r) for r in fake_api.received())


def findings(client: Any, ids: list[str]) -> list[dict[str, Any]]:
    results = client.mget([keys.task_result(i) for i in ids])
    return [json.loads(client.get(keys.finding(f))) for f in results if f]


def all_done(client: Any, ids: list[str]) -> bool:
    return all(client.mget([keys.task_result(i) for i in ids]))


def test_the_same_spec_on_two_hosts_runs_each_task_once(hosts: Any, fake_api: Any,
                                                         shared: SharedRedis,
                                                         tmp_path: Path) -> None:
    fake_api.script = paced
    spec = spec_for("t", pool_text("a", workers=2, extra="concurrency: 4\n"))
    one, two = hosts("h-one", spec).start(), hosts("h-two", spec).start()
    r = shared.client()
    view = collect(r, "t")
    assert [h["host"] for h in view["hosts"]] == ["h-one", "h-two"]
    assert not any(h["lost"] for h in view["hosts"])
    ids_of = {row["worker"] for row in view["workers"]}
    assert ids_of == {f"t/{h}/a-{i}" for h in ("h-one", "h-two") for i in (1, 2)}
    api = Api("t", r)
    # tasks longer than the pending re-check (10 s) and the expiry, and many short ones
    ids = api.submit_many([f"slow 12 long {i}" for i in range(4)])
    ids += api.submit_many([f"job {i}" for i in range(40)])
    wait_for(lambda: all_done(r, ids), 90, "every task's finding")
    time.sleep(1.0)
    done = findings(r, ids)
    assert sorted(f["task_id"] for f in done) == sorted(ids)
    assert all(f["status"] == "done" for f in done)
    counted = asked(fake_api)
    assert all(n == 1 for n in counted.values()) and len(counted) == len(ids), \
        [t for t, n in counted.items() if n > 1]
    assert {f["worker_id"].split("/")[1] for f in done} == {"h-one", "h-two"}
    assert not [e for _, e in r.xrange(keys.events("t")) if e["kind"] == "handed_back"]
    # status: both hosts, each with its workers, in one table with a host line each
    table = one.cli("status")
    assert table.returncode == 0, table.stderr
    assert "2 hosts" in table.stdout
    assert "host h-one: supervisor pid" in table.stdout and "host h-two:" in table.stdout
    header = next(line for line in table.stdout.splitlines() if line.startswith("HOST"))
    assert header.split()[:3] == ["HOST", "WORKER", "PID"]
    assert sum(1 for line in table.stdout.splitlines()
               if line.split()[:2] in (["h-one", "a-1"], ["h-two", "a-1"])) == 2
    # cost per host adds up, and no worker row merges two hosts
    by_host = costs.rows_by(costs.read_counters(r, "t"), "host")
    per_host = {row.key: row.get("calls") for row in by_host if row.kind == "host"}
    assert set(per_host) == {"h-one", "h-two"} and sum(per_host.values()) == len(ids)
    by_worker = costs.rows_by(costs.read_counters(r, "t"), "worker")
    assert {row.key for row in by_worker if row.kind == "worker"} <= ids_of
    # scale one host only, from that host's shell: it says which host it changed
    scaled = two.cli("scale", "a", "3")
    assert scaled.returncode == 0, scaled.stderr
    assert scaled.stdout.strip() == "a: 2 -> 3 workers on h-two"
    wait_for(lambda: len(two.rows("t")) == 3 and two.beating(), 20, "h-two's third worker")
    assert len(one.rows("t")) == 2
    # from a third shell (no state folder, only the Redis URL): down stops every host
    third = tmp_path / "third"
    third.mkdir()
    ask = Host(third, "h-three", spec, shared.url, env=api_env(fake_api))
    vague = ask.cli("scale", "a", "1")
    assert vague.returncode == 1 and "choose one with --host" in vague.stderr
    only = ask.cli("down", "--host", "h-two", "--timeout", "60")
    assert only.returncode == 0, only.stderr
    assert only.stdout.strip() == "swarm 't' is down on h-two."
    assert two.proc.wait(20) == 0 and one.proc.poll() is None and one.beating()
    two.start()
    down = ask.cli("down", "--timeout", "60")
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == "swarm 't' is down (2 hosts: h-one, h-two)."
    assert one.proc.wait(20) == 0 and two.proc.wait(20) == 0
    assert processes_under(one.folder) == [] and processes_under(two.folder) == []
    assert r.hget(keys.meta("t"), "state") == "stopped"


def test_two_swarms_on_one_redis_never_touch_each_other(hosts: Any, fake_api: Any,
                                                         shared: SharedRedis) -> None:
    fake_api.script = paced
    alpha = hosts("h-a", spec_for("alpha", pool_text("w", workers=2, extra="concurrency: 2\n")),
                  folder="alpha").start()
    r = shared.client()
    # a backlog in alpha (its two workers busy) before beta starts: beta must not take it
    backlog = Api("alpha", r).submit_many([f"slow 3 alpha {i}" for i in range(12)])
    beta = hosts("h-b", spec_for("beta", pool_text("w", workers=2, extra="concurrency: 2\n")),
                 folder="beta").start()
    beta_ids = Api("beta", r).submit_many([f"job beta {i}" for i in range(20)])
    # the seed's way: shared ground, served by both; the claim picks one, once
    seed_ids = [f"seed_{i:02d}" for i in range(20)]
    for task_id in seed_ids:
        r.set(keys.task(task_id), json.dumps({"description": f"job seed {task_id}"}))
        r.publish(keys.CHANNEL_TASKS, task_id)
    wait_for(lambda: all_done(r, backlog + beta_ids + seed_ids), 90, "every task")
    wait_for(lambda: all(int(r.hget(keys.counts(s), "queued") or 0) == 0
                         for s in ("alpha", "beta")), 30, "both queues to drain")
    time.sleep(1.0)
    ran = {f["task_id"]: f["worker_id"] for f in findings(r, backlog + beta_ids + seed_ids)}
    assert all(ran[i].startswith("alpha/") for i in backlog)
    assert all(ran[i].startswith("beta/") for i in beta_ids)
    counted = asked(fake_api)
    assert all(n == 1 for n in counted.values()), [t for t, n in counted.items() if n > 1]
    # each seed task: one record, in the swarm that ran it (the loser kept none)
    for task_id in seed_ids:
        owners = [s for s in ("alpha", "beta") if r.exists(keys.task_meta(s, task_id))]
        assert owners == [ran[task_id].split("/")[0]], (task_id, owners)
    counts_a, counts_b = r.hgetall(keys.counts("alpha")), r.hgetall(keys.counts("beta"))
    seeds_a = sum(1 for i in seed_ids if ran[i].startswith("alpha/"))
    assert int(counts_a["done"]) == len(backlog) + seeds_a
    assert int(counts_b["done"]) == len(beta_ids) + len(seed_ids) - seeds_a
    assert int(counts_a.get("queued", 0)) == int(counts_b.get("queued", 0)) == 0
    # stopping alpha leaves beta's workers alone
    before = {row["worker"]: row["pid"] for row in beta.rows("beta")}
    down = alpha.cli("down")
    assert down.returncode == 0, down.stderr
    time.sleep(3.0)  # longer than the heartbeat expiry
    assert {row["worker"]: row["pid"] for row in beta.rows("beta")} == before
    assert not [e for _, e in r.xrange(keys.events("beta")) if e["kind"] in ("hang", "exit")]
    late = Api("beta", r).submit_many(["job beta after"])
    wait_for(lambda: all_done(r, late), 30, "beta still working")


def test_a_host_that_loses_power_loses_nothing_and_takes_nothing_back(
        hosts: Any, fake_api: Any, shared: SharedRedis) -> None:
    fake_api.script = paced
    spec = spec_for("t", pool_text("a", workers=1, expiry="2s", interval="400ms",
                                   extra="concurrency: 4\n"))
    one, two = hosts("h-one", spec).start(), hosts("h-two", spec).start()
    r = shared.client()
    api = Api("t", r)
    # one task first: the shared prefix is then known, and no first request waits for
    # another's answer (workers/prefix_gate.py)
    warm = api.submit_many(["warm up"])
    wait_for(lambda: all_done(r, warm), 30, "the first task")
    ids = api.submit_many([f"slow 4 cut {i}" for i in range(8)])
    wait_for(lambda: sum(1 for row in collect(r, "t")["workers"] if row["task"]) == 2, 20,
             "both hosts busy")
    on_one = {m["task"] for m in _running(r, ids) if "/h-one/" in m["worker"]}
    assert on_one, "nothing was running on h-one"
    wait_for(lambda: len([f for f in r.hkeys(keys.inflight("t")) if "/h-one/" in f])
             == len(on_one), 20, "h-one's calls to be in flight")
    cut = time.monotonic()
    one.power_cut()
    # h-two takes h-one's running tasks back once their lease expires, and runs them
    wait_for(lambda: all(_state(r, i) in ("running", "done") and
                         "/h-two/" in (r.hget(keys.task_meta("t", i), "worker") or "")
                         for i in on_one), 30, "h-one's tasks running on h-two")
    taken_after = time.monotonic() - cut
    # only h-one can be shown lost (its lease may still linger now; it expires below)
    assert {h["host"] for h in collect(r, "t")["hosts"] if h["lost"]} <= {"h-one"}
    wait_for(lambda: [h for h in collect(r, "t")["hosts"] if h["host"] == "h-one"][0]["lost"],
             20, "h-one to be shown lost")
    assert "LOST" in two.cli("status").stdout
    wait_for(lambda: all_done(r, ids), 90, "every task")
    time.sleep(1.0)
    done = findings(r, ids)
    assert sorted(f["task_id"] for f in done) == sorted(ids)
    assert all(f["status"] == "done" for f in done)
    lost = costs.read_counters(r, "t")["total"]["*"].get("lost_calls", 0)
    assert lost >= len(on_one), f"{lost} calls lost in flight, {len(on_one)} were cut"
    total = costs.read_counters(r, "t")["total"]["*"]
    billed = fake_api.billed()["responses"]
    assert total["calls"] <= billed <= total["calls"] + lost
    # h-one comes back while h-two runs long tasks: it takes none of them
    more = api.submit_many([f"slow 6 back {i}" for i in range(4)])
    wait_for(lambda: sum(1 for m in _running(r, more) if "/h-two/" in m["worker"]) >= 4, 20,
             "h-two running the new tasks")
    one.start()
    wait_for(lambda: all_done(r, more), 60, "the new tasks")
    again = asked(fake_api)
    assert all(again[f"slow 6 back {i}"] == 1 for i in range(4)), again
    assert all(f["worker_id"].startswith("t/h-two/") for f in findings(r, more))
    print(f"\npower cut: h-one's {len(on_one)} running tasks taken back {taken_after:.2f}s "
          f"after the cut (expiry 2 s)")


def _running(r: Any, ids: list[str]) -> list[dict[str, str]]:
    metas = [r.hgetall(keys.task_meta("t", i)) for i in ids]
    return [dict(m, task=i) for i, m in zip(ids, metas) if m.get("state") == "running"]


def _state(r: Any, task_id: str) -> str:
    return r.hget(keys.task_meta("t", task_id), "state") or ""


def test_a_second_supervisor_under_the_same_host_name_is_refused(
        hosts: Any, shared: SharedRedis) -> None:
    spec = spec_for("t", pool_text("a"))
    first = hosts("h-same", spec, folder="first").start()
    second = hosts("h-same", spec, folder="second")
    said = second.cli("up", str(second.spec_path), timeout=60)
    assert said.returncode == 1
    line = said.stderr.strip()
    assert line.startswith("swarm: swarm 't' already runs on a host named 'h-same'")
    assert len(said.stderr.splitlines()) == 1 and "Traceback" not in said.stderr
    assert first.beating() and first.proc.poll() is None
    assert processes_under(second.folder) == []


def test_redis_that_restarts_empty_is_survived_and_said(tmp_path: Path, hosts: Any,
                                                       fake_api: Any) -> None:
    server = SharedRedis(tmp_path / "volatile", persistent=False).start()
    try:
        spec = spec_for("t", pool_text("a", workers=2))
        host = Host(tmp_path / "h", "h-one", spec, server.url, env=api_env(fake_api)).start()
        said = host.output.read_text()
        warning = [line for line in said.splitlines() if "appendonly" in line]
        assert warning == [f"swarm: warning: Redis at redis://127.0.0.1:{server.port}/0 has "
                           "appendonly off and no save points: a restart of that server "
                           "loses every queued task and the cost history; set 'appendonly "
                           "yes' in its configuration (or CONFIG SET appendonly yes)"]
        assert server.password not in said
        pids = {row["worker"]: row["pid"] for row in host.rows("t")}
        server.restart()  # comes back empty
        r = server.client()
        wait_for(lambda: r.sismember(keys.REGISTRY, "t"), 20, "the swarm to register again")
        wait_for(lambda: host.beating(), 20, "the workers to beat again")
        events = [e for _, e in r.xrange(keys.events("t"))]
        assert [e["kind"] for e in events].count("redis_lost_data") == 1
        assert {row["worker"]: row["pid"] for row in host.rows("t")} == pids
        ids = Api("t", r).submit_many(["job after the loss"])
        wait_for(lambda: all_done(r, ids), 30, "a task after the loss")
        assert host.cli("status").returncode == 0
        assert host.cli("down").returncode == 0
        assert host.proc.wait(20) == 0
    finally:
        host.stop()
        server.kill()


def test_a_poison_task_is_dead_lettered_after_max_attempts(make_swarm: Any, fake_api: Any) -> None:
    from tests.harness.swarm import fast_spec, pool

    spec = fast_spec(pool("a", extra="max_attempts: 3\non_start: tests.harness.hooks:poison_before_call\n"))
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    r = swarm.redis()
    refused = swarm.cli("submit", "junk \udcff\udcfe bytes")
    assert refused.returncode == 2 and refused.stderr.startswith(
        "swarm: the task's text is not valid UTF-8: '\\udcff' at character 5")
    ids = Api("t", r).submit_many(["poison pill", "a fine task"])
    wait_for(lambda: all_done(r, ids), 60, "both tasks")
    poison, fine = (json.loads(r.get(keys.finding(r.get(keys.task_result(i))))) for i in ids)
    assert fine["status"] == "done"
    assert poison["status"] == "failed"
    assert poison["error"].startswith("gave up after 3 attempts; last: internal error: "
                                      "RuntimeError('poisoned before the call')")
    assert r.hget(keys.task_meta("t", ids[0]), "attempts") == "3"
    assert r.hget(keys.task_meta("t", ids[0]), "state") == "dead"
    ledger = costs.read_counters(r, "t")["total"]["*"]
    assert ledger.get("lost_calls", 0) == 0 and ledger["calls"] == 1
    assert asked(fake_api) == Counter({"a fine task": 1})


def test_workers_ignore_sigpipe(make_swarm: Any) -> None:
    from tests.harness.swarm import fast_spec, pool

    swarm = make_swarm(fast_spec(pool("a"))).start()
    pid = swarm.workers()["a-1"]["pid"]
    ignored = int(next(line.split()[1] for line in
                       open(f"/proc/{pid}/status").read().splitlines()
                       if line.startswith("SigIgn:")), 16)
    assert ignored & (1 << (13 - 1)), "SIGPIPE (13) would kill the worker"
    assert psutil.Process(pid).is_running()
