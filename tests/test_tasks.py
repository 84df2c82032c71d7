"""Tasks in, findings out, through real workers, the real SDK and a fake Messages API."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import pytest

from tests.harness.fake_api import error_reply, text_reply, tool_use_reply
from tests.harness.procs import wait_for
from tests.harness.swarm import api_env, fast_spec, pool
from workers import keys

SEED_FIELDS = {"finding_id", "worker_id", "timestamp", "task", "result", "files_changed",
               "citations", "tokens_used", "cost"}


def last_user_text(request: dict[str, Any]) -> str:
    content = request["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(str(part.get("text") or part.get("content") or "") for part in content)


def has_tool_result(request: dict[str, Any]) -> list[dict[str, Any]]:
    content = request["messages"][-1]["content"]
    if isinstance(content, str):
        return []
    return [part for part in content if part.get("type") == "tool_result"]


def all_results(swarm, ids: list[str]) -> dict[str, str | None]:
    client = swarm.redis()
    values = client.mget([keys.task_result(i) for i in ids])
    return dict(zip(ids, values))


def test_submit_wait_end_to_end(make_swarm, fake_api):
    swarm = make_swarm(fast_spec(pool("haiku", workers=1)), env=api_env(fake_api)).start()
    result = swarm.cli("submit", "say hello to the swarm", "--wait", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done: say hello to the swarm"

    listed = json.loads(swarm.cli("tasks", "--json").stdout)
    assert len(listed) == 1 and listed[0]["state"] == "done"
    task_id = listed[0]["id"]
    client = swarm.redis()
    finding_id = client.get(keys.task_result(task_id))
    finding = json.loads(client.get(keys.finding(finding_id)))
    assert SEED_FIELDS <= set(finding)
    assert finding["finding_id"] == finding_id
    assert finding["worker_id"] == swarm.workers()["haiku-1"]["worker"] == \
        f"t/{swarm.workers()['haiku-1']['host']}/haiku-1"
    assert finding["task"] == "say hello to the swarm"
    assert finding["status"] == "done" and finding["error"] is None
    assert finding["model"] == "test-model"
    billed = fake_api.billed()
    assert finding["tokens_used"] == billed["input_tokens"] + billed["output_tokens"]
    assert finding["cost"] is None  # 'test-model' is in no price list: said, not guessed
    status = json.loads(swarm.cli("status", "--json").stdout)
    assert status["tasks"]["done"] == 1 and status["tasks"]["queued"] == 0
    assert status["workers"][0]["done"] == 1
    shown = swarm.cli("show", task_id)
    assert shown.returncode == 0 and "state: done" in shown.stdout and finding_id in shown.stdout


def test_tool_using_task_edits_a_file_and_escapes_are_refused(make_swarm, fake_api, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("status: TODO\n")
    (tmp_path / "secret.txt").write_text("outside\n")

    def script(request: dict[str, Any]):
        results = has_tool_result(request)
        if not results:
            return tool_use_reply("read_file", {"path": "../secret.txt"})
        if len(request["messages"]) == 3:
            return tool_use_reply("edit_file", {"path": "notes.txt", "old_string": "TODO",
                                                "new_string": "DONE"})
        return text_reply("edited notes.txt")

    fake_api.script = script
    spec = fast_spec(pool("haiku", workers=1, extra="workdir: work\n"))
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    result = swarm.cli("submit", "mark the notes done", "--wait", "--json", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    finding = json.loads(result.stdout)
    assert finding["status"] == "done" and finding["result"] == "edited notes.txt"
    assert finding["files_changed"] == ["notes.txt"]
    assert finding["turns"] == 3
    assert (work / "notes.txt").read_text() == "status: DONE\n"
    assert (tmp_path / "secret.txt").read_text() == "outside\n"
    refused = [r for r in fake_api.received() if has_tool_result(r)][0]
    tool_result = has_tool_result(refused)[0]
    assert tool_result.get("is_error") is True
    assert "refused" in json.dumps(tool_result["content"])


def test_seed_example_3_runs_unchanged(make_swarm, fake_api):
    swarm = make_swarm(fast_spec(pool("haiku", workers=2)), env=api_env(fake_api)).start()
    r = swarm.redis()  # the only change to the seed's snippet: the Redis connection
    completions = r.pubsub(ignore_subscribe_messages=True)
    completions.subscribe("channel:completions")
    findings = r.pubsub(ignore_subscribe_messages=True)
    findings.subscribe("channel:findings")

    # --- the seed's Example 3, as written ---
    task = {
        'description': 'Update agents.md',
        'files': ['/home/setup/infrafabric/agents.md']
    }
    task_id = 'task_001'
    r.set(f'task:{task_id}', json.dumps(task))
    r.publish('channel:tasks', task_id)
    # --- end of the seed's snippet ---

    finding_id = wait_for(lambda: r.get(f"task:{task_id}:result"), 15, "task_001's result")
    finding = json.loads(r.get(f"finding:{finding_id}"))
    assert finding["task"] == "Update agents.md" and finding["status"] == "done"
    assert r.get(f"task:{task_id}:claimed").startswith("t/") and \
        "/haiku-" in r.get(f"task:{task_id}:claimed")
    assert wait_for(lambda: completions.get_message(timeout=0.2), 5,
                    "channel:completions")["data"] == task_id
    assert wait_for(lambda: findings.get_message(timeout=0.2), 5,
                    "channel:findings")["data"] == finding_id
    assert len(fake_api.received()) == 1


def test_seed_style_worker_beside_the_swarm_never_runs_a_task_twice(make_swarm, fake_api):
    fake_api.latency = 0.05
    swarm = make_swarm(fast_spec(pool("haiku", workers=2, extra="concurrency: 4\n")),
                       env=api_env(fake_api)).start()
    r = swarm.redis()
    ran_by_seed: list[str] = []
    stop = threading.Event()
    sub = r.pubsub(ignore_subscribe_messages=True)
    sub.subscribe("channel:tasks")

    def seed_worker() -> None:  # the seed's active loop: claim with SET NX EX, then work
        while not stop.is_set():
            message = sub.get_message(timeout=0.1)
            if not message:
                continue
            task_id = message["data"]
            if r.set(f"task:{task_id}:claimed", "haiku_seed", nx=True, ex=300):
                ran_by_seed.append(task_id)
                finding_id = f"finding_seed{len(ran_by_seed):04d}"
                r.set(f"finding:{finding_id}", json.dumps({"finding_id": finding_id}))
                r.set(f"task:{task_id}:result", finding_id)
                r.publish("channel:completions", task_id)

    thread = threading.Thread(target=seed_worker, daemon=True)
    thread.start()
    ids = [f"race_{i:03d}" for i in range(60)]
    try:
        for task_id in ids:
            r.set(f"task:{task_id}", json.dumps({"description": f"job {task_id}"}))
            r.publish("channel:tasks", task_id)
        wait_for(lambda: all(all_results(swarm, ids).values()), 30, "every task's result")
    finally:
        stop.set()
        thread.join(5)
    by_swarm = [i for i, f in all_results(swarm, ids).items() if not f.startswith("finding_seed")]
    assert sorted(by_swarm + ran_by_seed) == ids, "a task ran twice, or not at all"
    assert ran_by_seed and by_swarm, "the race was not exercised"
    asked = {last_user_text(req).removeprefix("job ") for req in fake_api.received()}
    assert asked == set(by_swarm), "the swarm called the API for a task the seed worker ran"


def test_two_workers_per_pool_hear_announcements_and_submit_costs_them_little(
        make_swarm, fake_api):
    """Every listener pays a look per announced task, and `swarm submit` announces what it
    has already queued: so only slots 1-2 of each pool listen, not every worker."""
    from launcher.client import Swarm

    swarm = make_swarm(fast_spec(pool("a", workers=4) + pool("b", workers=1)),
                       env=api_env(fake_api)).start()
    r = swarm.redis()
    wait_for(lambda: r.pubsub_numsub("channel:tasks")[0][1] == 3, 10, "a-1, a-2 and b-1 to listen")
    looks: list[str] = []
    watching = threading.Event()

    def watch() -> None:  # the listeners' look at each announced task, outside any script
        with swarm.redis().monitor() as monitor:
            watching.set()
            for command in monitor.listen():
                if command["command"].startswith(f"EXISTS {keys.task_meta('t', '')}") and \
                        command.get("client_type") != "lua":
                    looks.append(command["command"])
                if command["command"] == "ECHO end of watch":
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    watching.wait(5)
    ids = Swarm("t", r).submit_many([f"job {i}" for i in range(200)], pool="a")
    wait_for(lambda: all(all_results(swarm, ids).values()), 30, "every task's result")
    r.echo("end of watch")
    watcher.join(10)
    assert len(ids) <= len(looks) <= 3 * len(ids), \
        f"{len(looks)} lookups for {len(ids)} tasks by 3 listeners"
    assert r.pubsub_numsub("channel:tasks")[0][1] == 3
    # the seed's way still works, and the pool with one worker hears it too
    r.set("task:seed_b", json.dumps({"description": "for b", "pool": "b"}))
    r.publish("channel:tasks", "seed_b")
    wait_for(lambda: r.get("task:seed_b:result"), 15, "the announced task's result")
    assert "/b-1#" in r.get("task:seed_b:claimed")


def test_tasks_announced_while_no_swarm_listened_are_picked_up(tmp_path, make_swarm, fake_api):
    from launcher.redis_server import EmbeddedRedis
    from launcher.state import StateDir

    server_dir = StateDir(tmp_path / "server")
    server_dir.create()
    server = EmbeddedRedis(server_dir, tmp_path / "server.log")
    target = server.start()
    try:
        r = target.sync()
        for name in ("early_1", "early_2", "claimed_1", "finished_1"):
            r.set(f"task:{name}", json.dumps({"description": f"do {name}"}))
            r.publish("channel:tasks", name)  # nobody hears it
        r.set("task:claimed_1:claimed", "haiku_other", ex=300)
        r.set("task:finished_1:result", "finding_earlier")
        path = target.url.removeprefix("unix://")
        env = {**api_env(fake_api), "EXT_PW": target.password}
        spec = fast_spec(pool("haiku", workers=1), name="late",
                         extra="redis: unix://:${EXT_PW}@" + path + "\n")
        swarm = make_swarm(spec, name="late", env=env).start()
        wait_for(lambda: r.get("task:early_1:result") and r.get("task:early_2:result"), 15,
                 "the early tasks to run")
        time.sleep(0.5)
        assert r.get("task:claimed_1:result") is None
        assert r.get("task:finished_1:result") == "finding_earlier"
        assert sorted(last_user_text(q) for q in fake_api.received()) == ["do early_1",
                                                                         "do early_2"]
        assert [e for e in swarm.events("seed_tasks_found") if e["tasks"] == "2"]
        swarm.stop()
    finally:
        server.stop()


def test_bad_payloads_are_dead_lettered_and_nothing_crashes(make_swarm, fake_api):
    swarm = make_swarm(fast_spec(pool("haiku", workers=1)), env=api_env(fake_api)).start()
    r = swarm.redis()
    bad = {"bad_json": "{not json", "no_description": json.dumps({"files": ["a"]}),
           "empty_description": json.dumps({"description": "  "}),
           "not_an_object": json.dumps(["a list"]),
           "bad_files": json.dumps({"description": "x", "files": "a"})}
    for task_id, body in bad.items():
        r.set(f"task:{task_id}", body)
        r.publish("channel:tasks", task_id)
    r.set("task:good", json.dumps({"description": "fine"}))
    r.publish("channel:tasks", "good")
    wait_for(lambda: all(r.get(f"task:{t}:result") for t in [*bad, "good"]), 60, "results")
    dead = [json.loads(x) for x in r.lrange(keys.dead("t"), 0, -1)]
    reasons = {d["task"]: d["reason"] for d in dead}
    assert sorted(reasons) == sorted(bad)
    assert reasons["bad_json"].startswith("payload is not valid JSON")
    assert reasons["no_description"] == "payload has no 'description' (a non-empty string)"
    assert reasons["not_an_object"] == "payload must be a JSON object, not list"
    assert reasons["bad_files"] == "payload 'files' must be a list of strings"
    for task_id in bad:
        finding = json.loads(r.get(keys.finding(r.get(f"task:{task_id}:result"))))
        assert finding["status"] == "failed" and finding["error"] == reasons[task_id]
    assert len(fake_api.received()) == 1
    status = swarm.status()
    assert status["tasks"]["dead"] == 5 and status["tasks"]["done"] == 1
    assert status["workers"][0]["restarts"] == 0
    # (its row says idle with its next beat after the last task)
    wait_for(lambda: swarm.status()["workers"][0]["state"] == "idle", 10, "the worker idle")
    listed = json.loads(swarm.cli("tasks", "--state", "dead", "--json").stdout)
    assert sorted(t["id"] for t in listed) == sorted(bad)


def test_crashed_and_hung_workers_lose_nothing_and_duplicate_nothing(make_swarm, fake_api):
    fake_api.latency = 0.1
    spec = fast_spec(pool("haiku", workers=3, expiry="1500ms", interval="300ms",
                          extra="concurrency: 8\n"))
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    from launcher.client import Swarm as Api

    api = Api("t", swarm.redis())
    ids = [api.submit(f"job {i}") for i in range(200)]
    wait_for(lambda: sum(1 for v in all_results(swarm, ids).values() if v) >= 30, 20,
             "work to be under way")
    rows = swarm.workers()
    os.kill(rows["haiku-1"]["pid"], signal.SIGKILL)
    os.kill(rows["haiku-2"]["pid"], signal.SIGSTOP)
    wait_for(lambda: all(all_results(swarm, ids).values()), 60, "every task's finding")
    results = all_results(swarm, ids)
    assert len(set(results.values())) == 200, "two tasks share a finding"
    r = swarm.redis()
    findings = [json.loads(r.get(keys.finding(f))) for f in results.values()]
    assert all(f["status"] == "done" for f in findings)
    assert sorted(f["task_id"] for f in findings) == sorted(ids)
    stored = sum(1 for _ in r.scan_iter("finding:*", count=1000))
    assert stored == 200, f"{stored} findings stored for 200 tasks"
    assert swarm.events("handed_back"), "no task was in flight on a killed worker"
    asked = [last_user_text(q) for q in fake_api.received()]
    assert set(asked) == {f"job {i}" for i in range(200)}
    status = swarm.status()["tasks"]
    assert status["done"] == 200 and status["queued"] == 0 and status["running"] == 0


def test_task_whose_worker_keeps_dying_is_dead_lettered_after_max_attempts(make_swarm, fake_api):
    fake_api.latency = 30.0  # the call never returns in time: we kill the worker running it
    spec = fast_spec(pool("haiku", workers=1, max_restarts=10, extra="max_attempts: 2\n"))
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    task_id = swarm.cli("submit", "doomed").stdout.strip()
    killed: list[int] = []
    for attempt in (1, 2):
        pid = wait_for(lambda: (w := swarm.workers()["haiku-1"])["task"] == task_id
                       and w["pid"] not in killed and w["pid"], 15, f"attempt {attempt}")
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    finding_id = wait_for(lambda: swarm.redis().get(keys.task_result(task_id)), 15, "result")
    finding = json.loads(swarm.redis().get(keys.finding(finding_id)))
    assert finding["status"] == "failed"
    assert finding["error"].startswith("gave up after 2 attempts; last: t/")
    assert "/haiku-1#2 killed by SIGKILL" in finding["error"]
    dead = [json.loads(x) for x in swarm.redis().lrange(keys.dead("t"), 0, -1)]
    assert [d["task"] for d in dead] == [task_id]
    record = json.loads(swarm.cli("show", task_id, "--json").stdout)
    assert record["state"] == "dead" and record["attempts"] == "2"


def test_api_errors_401_fails_at_once_429_is_retried(make_swarm, fake_api):
    calls: dict[str, int] = {}

    def script(request: dict[str, Any]):
        text = last_user_text(request)
        calls[text] = calls.get(text, 0) + 1
        if text == "needs auth":
            return error_reply(401, "authentication_error", "invalid x-api-key")
        if text == "busy api" and calls[text] <= 2:
            return error_reply(429, "rate_limit_error", "slow down", retry_after=0.05)
        return text_reply(f"ok {text}")

    fake_api.script = script
    swarm = make_swarm(fast_spec(pool("haiku", workers=1)), env=api_env(fake_api)).start()
    denied = json.loads(swarm.cli("submit", "needs auth", "--wait", "--json").stdout)
    assert denied["status"] == "failed"
    assert denied["error"] == "API authentication failed (401): invalid x-api-key"
    assert calls["needs auth"] == 1, "a 401 was retried"
    busy = json.loads(swarm.cli("submit", "busy api", "--wait", "--json").stdout)
    assert busy["status"] == "done" and busy["result"] == "ok busy api"
    assert calls["busy api"] == 3


def test_spend_limit_pauses_the_whole_swarm(make_swarm, fake_api):
    def script(request: dict[str, Any]):
        if last_user_text(request) == "expensive":
            return error_reply(429, "rate_limit_error", "spend limit reached for this month",
                               error_code="enforced_spend_limit_reached", should_retry=False)
        return text_reply("ok")

    fake_api.script = script
    swarm = make_swarm(fast_spec(pool("haiku", workers=2)), env=api_env(fake_api)).start()
    finding = json.loads(swarm.cli("submit", "expensive", "--wait", "--json").stdout)
    assert finding["status"] == "failed"
    assert "API spend limit reached: spend limit reached for this month" in finding["error"]
    view = json.loads(swarm.cli("status", "--json").stdout)
    assert view["paused"].startswith("API spend limit reached")
    assert "PAUSED: API spend limit reached" in swarm.cli("status").stdout
    time.sleep(0.7)  # every worker has read the flag with a beat
    later = swarm.cli("submit", "cheap").stdout.strip()
    time.sleep(1.5)
    assert swarm.redis().get(keys.task_result(later)) is None, "a paused swarm took work"
    assert swarm.cli("resume").returncode == 0
    assert wait_for(lambda: swarm.redis().get(keys.task_result(later)), 10, "resumed work")


def test_missing_api_key_is_refused_at_up_in_one_line(make_swarm, fake_api):
    swarm = make_swarm(fast_spec(pool("haiku", workers=1)),
                       env={"ANTHROPIC_BASE_URL": fake_api.url, "ANTHROPIC_API_KEY": ""})
    result = swarm.cli("up", "-d", "swarm.yaml", timeout=60)
    assert result.returncode == 2
    assert result.stderr == ("swarm: ANTHROPIC_API_KEY is not set: every task of pool haiku "
                             "would fail; export it (or ANTHROPIC_AUTH_TOKEN) in this shell, "
                             "then run `swarm up` again\n")
    assert not (swarm.folder / ".swarm" / "t").exists() or not swarm.state.pid_file.exists()
    # a pool that brings its own key may start without one in the shell
    from launcher.up import api_key_problem
    from launcher.spec import load

    spec_path = swarm.folder / "swarm.yaml"
    spec_path.write_text(spec_path.read_text().replace(
        "  haiku:\n", "  haiku:\n    env: {ANTHROPIC_API_KEY: from-the-spec}\n"))
    assert api_key_problem(load(spec_path), environ={}) is None


def test_a_worker_without_a_key_fails_its_tasks_saying_so(make_swarm, fake_api):
    # (a key can still be missing in a worker: a pool's env that empties it)
    spec = fast_spec(pool("haiku", workers=1, extra="env: {ANTHROPIC_API_KEY: ''}\n"))
    swarm = make_swarm(spec, env={"ANTHROPIC_BASE_URL": fake_api.url}).start()
    finding = json.loads(swarm.cli("submit", "anything", "--wait", "--json").stdout)
    assert finding["status"] == "failed"
    assert finding["error"] == "ANTHROPIC_API_KEY is not set: set it in the environment of `swarm up`"
    assert fake_api.received() == []


def test_python_api_submit_many_wait_and_bad_input(make_swarm, fake_api):
    from launcher.client import SubmitError
    from launcher.client import Swarm as Api

    swarm = make_swarm(fast_spec(pool("haiku", workers=1, extra="concurrency: 4\n")),
                       env=api_env(fake_api)).start()
    api = Api("t", swarm.redis())
    ids = api.submit_many([f"bulk {i}" for i in range(20)])
    assert len(set(ids)) == 20
    findings = [api.wait(task_id, timeout=20) for task_id in ids]
    assert [f["result"] for f in findings] == [f"done: bulk {i}" for i in range(20)]
    with pytest.raises(SubmitError, match="has no pool 'nope'"):
        api.submit("x", pool="nope")
    with pytest.raises(SubmitError, match="description is empty"):
        api.submit("   ")
    fake_api.latency = 5.0
    slow = api.submit("slow one")
    with pytest.raises(TimeoutError, match=f"no finding for {slow}"):
        api.wait(slow, timeout=0.3)
    bad = swarm.cli("submit", "x", "--pool", "nope")
    assert bad.returncode == 2 and bad.stderr.startswith("swarm: swarm 't' has no pool 'nope'")
