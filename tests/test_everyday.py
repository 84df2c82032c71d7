"""Everyday use (issue 15): what a new user tripped on, and what users of supervisorctl,
pm2, Celery and RQ reach for first: cost tables that say what they know, task listings
that fit, ids by prefix, task control (cancel, retry, purge), budgets raised while the
swarm runs, restart and reload, and the CLI's manners. Real swarms against the fake
Messages API."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import lead_script as ls
from tests.harness.fake_api import FakeAPI, Reply, error_reply, text_reply
from tests.harness.procs import SWARM_CLI, cli_env, wait_for
from tests.harness.swarm import api_env, fast_spec, pool
from workers import keys

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent
PRICED = "prices:\n  test-model: {input: 1, output: 5}\n"


def api(swarm: Any) -> Any:
    from launcher.client import Swarm

    return Swarm(swarm.name, swarm.redis())


def test_cost_tables_say_what_they_know(make_swarm: Any, fake_api: FakeAPI) -> None:
    fake_api.script = lambda req: text_reply("fine")
    spec = fast_spec(pool("a") + pool("u", model="a-model-nobody-prices"), extra=PRICED)
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    client = api(swarm)
    for pool_name in ("a", "u"):
        client.wait(client.submit("say fine", pool=pool_name), timeout=30)
    table = swarm.cli("cost", "--by", "pool").stdout
    unknown = next(line for line in table.splitlines() if line.startswith("u "))
    assert "unknown *" in unknown and "100.0%" not in unknown and "$0.000000" not in unknown
    rows = {r["key"]: r for r in json.loads(swarm.cli("cost", "--by", "pool", "--json").stdout)
            ["rows"]}
    assert rows["u"]["savings_pct"] is None and rows["a"]["savings_pct"] is not None
    by_task = json.loads(swarm.cli("cost", "--by", "task", "--json").stdout)["rows"]
    priced = next(r for r in by_task if r["cost_usd"] > 0)
    assert priced["output"] > 0 and priced["input"] > 0 and priced["reference_usd"] > 0
    billed = fake_api.billed()["by_model"]["test-model"]
    assert priced["output"] == billed["output_tokens"]
    assert priced["input"] + priced["cache_read"] + priced["cache_write"] == \
        billed["input_tokens"] + billed["cache_read_input_tokens"] + \
        billed["cache_creation_input_tokens"]
    both = swarm.cli("cost", "--json", "--csv")
    assert both.returncode == 2 and both.stderr == "swarm: --json and --csv: choose one\n"


def test_tasks_list_whole_ids_with_what_they_are_and_take_prefixes(
        make_swarm: Any, fake_api: FakeAPI) -> None:
    fake_api.script = lambda req: (error_reply(400) if "FAIL" in ls.task_text(req)
                                   else text_reply("fine"))
    swarm = make_swarm(fast_spec(pool("a", extra="concurrency: 4\n")),
                       env=api_env(fake_api)).start()
    client = api(swarm)
    good = client.submit("count the modules please")
    bad = client.submit("FAIL on purpose")
    r = swarm.redis()
    r.set("task:seed_bad_one", "{not json")  # dead-lettered
    r.publish("channel:tasks", "seed_bad_one")
    for task_id in (good, bad):
        client.wait(task_id, timeout=30)
    wait_for(lambda: r.get(keys.task_result("seed_bad_one")), 30, "the dead letter")
    status = swarm.cli("status").stdout
    assert "2 failed (1 of them dead-lettered)" in status
    failed = json.loads(swarm.cli("tasks", "--state", "failed", "--json").stdout)
    assert sorted(t["id"] for t in failed) == sorted([bad, "seed_bad_one"])
    assert all(isinstance(t["attempts"], int) and isinstance(t["submitted"], float)
               for t in failed)
    bogus = swarm.cli("tasks", "--state", "bogus")
    assert bogus.returncode == 2 and "--state must be one of queued, running" in bogus.stderr
    listing = swarm.cli("tasks").stdout.splitlines()
    assert listing[0].split() == ["TASK", "POOL", "STATE", "ATTEMPTS", "SUBMITTED",
                                  "DESCRIPTION", "/", "ERROR"]
    row = next(line for line in listing if line.startswith(good + " "))
    assert "count the modules please" in row
    shown = swarm.cli("show", good[:12])
    assert shown.returncode == 0 and f"id: {good}" in shown.stdout
    several = swarm.cli("show", "task_")
    assert several.returncode == 2 and "is the start of several ids" in several.stderr
    none = swarm.cli("show", "zzz")
    assert none.returncode == 2 and "no task or run 'zzz'" in none.stderr


def test_submit_checks_its_files_and_reads_stdin(make_swarm: Any, fake_api: FakeAPI,
                                                 tmp_path: Path) -> None:
    fake_api.script = lambda req: text_reply("ok")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "here.md").write_text("x")
    swarm = make_swarm(fast_spec(pool("a", extra="workdir: work\n")),
                       env=api_env(fake_api)).start()
    missing = swarm.cli("submit", "read it", "--file", "missing.md")
    assert missing.returncode == 2
    assert missing.stderr.startswith("swarm: no such file in pool a's workdir ")
    assert missing.stderr.rstrip().endswith(": missing.md")
    assert swarm.cli("submit", "read it", "--file", "here.md").returncode == 0
    piped = subprocess.run([*SWARM_CLI, "submit", "-"], input="a task\nfrom stdin\n",
                           cwd=swarm.folder, env=cli_env(api_env(fake_api)),
                           capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    task_id = piped.stdout.strip()
    assert json.loads(swarm.redis().get(keys.task(task_id)))["description"] == \
        "a task\nfrom stdin\n"


def test_a_spent_budget_says_so_and_can_be_raised_while_running(
        make_swarm: Any, fake_api: FakeAPI) -> None:
    fake_api.script = lambda req: text_reply("ok", input_tokens=5000)  # $0.005 a task
    spec = fast_spec(pool("a"), extra=PRICED + "budget_usd: 0.004\n")
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    client = api(swarm)
    client.wait(client.submit("first"), timeout=30)
    wait_for(lambda: client.paused(), 30, "the budget's pause")
    later = swarm.cli("submit", "second")
    assert later.returncode == 0
    assert "the swarm takes no new work now (budget reached: the swarm spent" in later.stderr
    refused = swarm.cli("resume")
    assert refused.returncode == 1
    assert "the swarm's budget is still spent ($0.00500" in refused.stderr
    raised = swarm.cli("budget", "1")
    assert raised.returncode == 0 and raised.stdout.strip() == \
        "the swarm's budget: $1 (was $0.004)"
    assert client.wait(later.stdout.strip(), timeout=30)["status"] == "done"
    assert "the swarm: $0.0100" in swarm.cli("budget").stdout
    assert swarm.status()["paused"] is None
    bad = swarm.cli("budget", "lots")
    assert bad.returncode == 2 and "is not a number of USD" in bad.stderr


def test_cancel_retry_and_purge(make_swarm: Any, fake_api: FakeAPI) -> None:
    release = threading.Event()

    async def script(req: dict[str, Any]) -> Reply:
        import asyncio

        if "HOLD" in ls.task_text(req):
            await asyncio.to_thread(release.wait, 60)
        return text_reply("ok")

    fake_api.script = script
    swarm = make_swarm(fast_spec(pool("a")), env=api_env(fake_api)).start()
    client = api(swarm)
    held = client.submit("HOLD the worker")
    wait_for(lambda: swarm.redis().hget(keys.task_meta(swarm.name, held), "state") ==
             "running", 30, "the first task running")
    queued = client.submit("wait in line")
    assert swarm.cli("cancel", queued[:14]).stdout.strip() == f"{queued[:14]}: cancelled"
    assert client.wait(queued, timeout=10)["status"] == "cancelled"
    said = swarm.cli("cancel", held).stdout.strip()
    assert said == f"{held}: running: its worker stops it"
    finding = client.wait(held, timeout=30)  # within a beat, not when the call returns
    assert finding["status"] == "cancelled" and "cancelled while it ran" in finding["error"]
    busy = client.submit("HOLD once more")
    wait_for(lambda: swarm.redis().hget(keys.task_meta(swarm.name, busy), "state") ==
             "running", 30, "another task running")
    not_finished = swarm.cli("retry", busy)
    assert not_finished.returncode == 2
    assert f"task {busy} cannot be retried: running" in not_finished.stdout
    release.set()
    again = swarm.cli("retry", queued)
    assert again.stdout.strip() == f"{queued}: queued again (was cancelled)"
    assert client.wait(queued, timeout=30)["status"] == "done"
    counts = swarm.status()["tasks"]
    assert counts["cancelled"] == 1 and counts["done"] >= 1
    purged = swarm.cli("purge", "--state", "cancelled", "--yes")
    assert purged.stdout.strip() == "purged 1 task(s)"
    assert swarm.redis().exists(keys.task_meta(swarm.name, held)) == 0
    assert swarm.status()["tasks"]["cancelled"] == 0


def test_restart_and_reload_while_running(make_swarm: Any, fake_api: FakeAPI) -> None:
    fake_api.script = lambda req: text_reply("ok")
    swarm = make_swarm(fast_spec(pool("a") + pool("b")), env=api_env(fake_api)).start()

    def slots() -> dict[str, dict[str, Any]]:
        return {w["slot"]: w for w in swarm.status()["workers"]}

    before = slots()
    assert swarm.cli("restart", "a").returncode == 0
    wait_for(lambda: slots()["a-1"]["generation"] == before["a-1"]["generation"] + 1
             and slots()["a-1"]["state"] in ("idle", "busy"), 30, "a-1 restarted")
    assert slots()["a-1"]["restarts"] == 0  # asked for: not counted against it
    assert slots()["b-1"]["generation"] == before["b-1"]["generation"]
    unknown = swarm.cli("restart", "nope")
    assert unknown.returncode == 2 and "has no pool or worker 'nope'" in unknown.stderr
    # reload: pool a gets two workers, pool b a new model (restarted), a budget
    spec = swarm.spec_path.read_text()
    spec = spec.replace("  a:\n    model: test-model\n    workers: 1\n",
                        "  a:\n    model: test-model\n    workers: 2\n")
    spec = spec.replace("  b:\n    model: test-model\n", "  b:\n    model: other-model\n")
    swarm.spec_path.write_text(spec.replace("pools:\n", "budget_usd: 7\npools:\n"))
    done = swarm.cli("reload")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: len(slots()) == 3 and all(
        w["state"] in ("idle", "busy") for w in slots().values()), 30, "the reload")
    assert slots()["b-1"]["generation"] == before["b-1"]["generation"] + 1
    assert slots()["a-1"]["generation"] == before["a-1"]["generation"] + 1  # (the restart)
    assert swarm.redis().hget(keys.budgets(swarm.name), "swarm") == "7.0"
    client = api(swarm)
    assert client.wait(client.submit("on b", pool="b"), timeout=30)["model"] == "other-model"
    swarm.spec_path.write_text(spec.replace("pools:\n", "pools: [\n"))
    broken = swarm.cli("reload")
    assert broken.returncode == 2 and broken.stderr.startswith("swarm: not reloaded: ")


def test_ctrl_c_twice_stops_at_once_and_says_so(make_swarm: Any, fake_api: FakeAPI) -> None:
    fake_api.script = lambda req: text_reply("slow", delay=30)
    swarm = make_swarm(fast_spec(pool("a"), stop_grace="20s"), env=api_env(fake_api))
    swarm.start()
    api(swarm).submit("take your time")
    wait_for(lambda: swarm.status()["workers"][0]["state"] == "busy", 30, "a busy worker")
    assert swarm.proc is not None
    swarm.proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    swarm.proc.send_signal(signal.SIGINT)
    assert swarm.proc.wait(timeout=30) == 130
    log = (swarm.folder / "logs" / "supervisor.log").read_text()
    assert "(the swarm was stopped at once: SIGINT twice)" in log
    assert "out of memory" not in log


def test_the_cli_has_the_manners_users_expect(make_swarm: Any, fake_api: FakeAPI) -> None:
    fake_api.script = lambda req: text_reply("fine")
    version = subprocess.run([*SWARM_CLI, "--version"], capture_output=True, text=True,
                             env=cli_env(), timeout=60)
    assert re.fullmatch(r"swarm \d+\.\d+\.\d+\n", version.stdout)
    helped = subprocess.run([*SWARM_CLI, "submit", "-h"], capture_output=True, text=True,
                            env=cli_env(), timeout=60)
    assert helped.returncode == 0 and "--wait" in helped.stdout and "-w" in helped.stdout
    top = subprocess.run([*SWARM_CLI, "-h"], capture_output=True, text=True, env=cli_env(),
                         timeout=60)
    assert "--install-completion" in top.stdout and "--version" in top.stdout
    status_help = subprocess.run([*SWARM_CLI, "status", "-h"], capture_output=True,
                                 text=True, env=cli_env(), timeout=60).stdout
    assert "--watch" in status_help and "-W" in status_help
    swarm = make_swarm(fast_spec(pool("a") + pool("spare", workers=0)), env=api_env(fake_api))
    up = swarm.cli("up", "-d", "swarm.yaml", timeout=120)
    assert up.returncode == 0, up.stderr
    assert "is up: 1 worker, supervisor pid" in up.stdout
    assert [w["slot"] for w in swarm.status()["workers"]] == ["a-1"]
    assert swarm.cli("scale", "spare", "1").returncode == 0
    wait_for(lambda: len(swarm.status()["workers"]) == 2, 30, "the spare worker")
    beat = next(line for line in swarm.cli("status").stdout.splitlines() if " a-1 " in line
                or line.startswith("a-1"))
    assert re.search(r"\b\d+\.\ds\b", beat), beat
    client = api(swarm)
    finding = client.wait(client.submit("say fine"), timeout=30)
    readme = (ROOT / "README.md").read_text()
    paragraph = readme[readme.index("The finding is the seed's FINDING FORMAT"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    named = set(re.findall(r"`(\w+)`", paragraph)) - {"finding", "channel"}
    assert named and named <= set(finding), named - set(finding)
    worker_log = (swarm.folder / "logs" / "a-1.log").read_text()
    assert f"t/a-1#1 task {finding['task_id']}: started, attempt 1 of 3: say fine" in worker_log
    assert f"task {finding['task_id']}: done in " in worker_log and "\x1b[" not in worker_log
    # a second swarm cannot write into the first one's log folder while it runs
    other = swarm.folder / "other.yaml"
    other.write_text(fast_spec(pool("z"), name="other"))
    refused = swarm.cli("up", "-d", "other.yaml")
    assert refused.returncode == 2
    assert "holds the logs of swarm 't', running" in refused.stderr


def test_the_foreground_live_view_shows_the_work_and_keeps_out_of_the_logs(
        make_swarm: Any, fake_api: FakeAPI) -> None:
    import os
    import pty
    import select

    fake_api.script = lambda req: text_reply("fine")
    swarm = make_swarm(fast_spec(pool("a", workers=2)), env=api_env(fake_api))
    env = cli_env(api_env(fake_api))
    pid, fd = pty.fork()
    if pid == 0:  # the child: `swarm up` in the foreground, on a terminal
        os.chdir(swarm.folder)
        os.execvpe(SWARM_CLI[0], [*SWARM_CLI, "up", "swarm.yaml"], env)
    seen = b""

    def read_for(seconds: float) -> None:
        nonlocal seen
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(fd, 65536)
                except OSError:
                    return

    try:
        wait_for(lambda: read_for(0.5) or b"tasks: 0 queued" in seen, 60, "the live view")
        # workers forked while the view is up (a restart) log as plainly as the first
        assert swarm.cli("restart").returncode == 0
        wait_for(lambda: read_for(0.2) or all(
            w["generation"] == 2 and w["state"] == "idle" for w in swarm.status()["workers"]),
            60, "both workers restarted")
        client = api(swarm)
        assert client.wait(client.submit("say fine"), timeout=30)["status"] == "done"
        wait_for(lambda: read_for(0.5) or b"1 done, 0 failed" in seen, 30, "the count")
        assert b"WORK" in seen and b"idle" in seen
        for name in ("a-1.log", "a-2.log"):
            text = (swarm.folder / "logs" / name).read_text()
            assert "#2 started pid=" in text and "\x1b[" not in text, text[-500:]
    finally:
        os.kill(pid, signal.SIGINT)
        read_for(1.0)
        try:
            os.waitpid(pid, 0)
        finally:
            os.close(fd)


def test_two_hundred_tasks_at_once_on_one_worker(make_swarm: Any, fake_api: FakeAPI) -> None:
    # (redis-py 8 caps a pool at 100 connections and raises past it: a worker with more
    # tasks in flight than that failed some of them with MaxConnectionsError)
    fake_api.script = lambda req: text_reply("fine")
    fake_api.latency = 0.3
    swarm = make_swarm(fast_spec(pool("a", extra="concurrency: 200\n")), env=api_env(fake_api))
    swarm.start()
    client = api(swarm)
    ids = client.submit_many([f"task {i}" for i in range(200)])
    findings = [client.wait(task_id, timeout=120) for task_id in ids]
    assert [f["status"] for f in findings].count("done") == 200
    assert swarm.status()["tasks"]["done"] == 200
    attempts = [int(swarm.redis().hget(keys.task_meta(swarm.name, t), "attempts")) for t in ids]
    assert set(attempts) == {1}
