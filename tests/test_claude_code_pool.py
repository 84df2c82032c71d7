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

from tests.harness.claude_code import MODEL, claude_code_script
from tests.harness.fake_api import Faults
from tests.harness.procs import wait_for
from tests.harness.swarm import api_env, fast_spec, findings_of, finished, ledger_is, pool
from workers import keys

pytest.importorskip("claude_agent_sdk")


def cc_pool(name: str = "cc", workers: int = 1, extra: str = "", concurrency: int = 4) -> str:
    return pool(name, workers=workers, model=MODEL, extra=(
        f"runtime: claude-code\nworkdir: work\nconcurrency: {concurrency}\n" + extra))


def submit(swarm, texts: list[str], pool_name: str = "cc") -> list[str]:
    from launcher.client import Swarm as Api

    return Api(swarm.name, swarm.redis()).submit_many(texts, pool=pool_name)




def assert_ledger_is_the_bill(swarm, fake_api) -> dict[str, int]:
    return ledger_is(swarm, fake_api.billed())


@pytest.fixture
def work(tmp_path):
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


def cli_processes(under: Any) -> list[psutil.Process]:
    """Claude Code CLIs and what they started, working in the folder ``under`` (the
    test's own: another swarm on the machine may run CLIs too)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if "_bundled/claude" in line or "swarm-cc-sleep" in line:
            try:
                if proc.cwd().startswith(str(under)):
                    found.append(proc)
            except psutil.Error:
                pass  # gone meanwhile
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
    for f in found:  # the CLI's own count agrees with the ledger's
        assert f["claude_code_cost_usd"] == pytest.approx(f["cost_nano_usd"] / 1e9, abs=1e-9)
    # the pool's tools, mapped, and no network tool: that is all the model is offered
    offered = {t["name"] for r in fake_api.received() for t in r.get("tools", [])}
    assert {"Read", "Write", "Edit", "Glob", "Grep"} <= offered <= {
        "Read", "Write", "Edit", "MultiEdit", "Glob", "LS", "Grep"}, offered
    assert swarm.redis().hlen(keys.inflight("t")) == 0
    # its config and temp files are in the worker's folder under the state folder
    home = swarm.folder / ".swarm" / "t" / "claude" / "cc-1"
    assert (home / "config").is_dir() and any((home / "config").iterdir())


ESCAPES = [
    # (directive, what must stay true)
    ("write /etc/swarm-escape.txt: pwned",
     lambda root: not os.path.exists("/etc/swarm-escape.txt")),
    ("write ../outside.txt: pwned", lambda root: not (root.parent / "outside.txt").exists()),
    ("write swarm.yaml: pwned", lambda root: "pwned" not in (root / "swarm.yaml").read_text()),
    ("write .swarm/t/stolen.txt: pwned", lambda root: not (root / ".swarm/t/stolen.txt").exists()),
    ("run: ln -s /etc/hostname link && echo pwned > link",
     lambda root: "pwned" not in open("/etc/hostname").read()),
    ("run: echo pwned > /tmp/swarm-cc-escape",
     lambda root: not os.path.exists("/tmp/swarm-cc-escape")),
]


def test_claude_code_cannot_escape_its_workdir_or_reach_swarms_secrets(
        make_swarm, fake_api, tmp_path):
    """The escape table of the built-in tools, through Claude Code's Write and Bash
    tools, with the workdir being the spec's own folder (the state folder, the spec and
    the logs inside it): every write out is refused, and neither the API key nor the
    Redis password is anywhere the commands can read."""
    fake_api.script = claude_code_script
    spec = fast_spec(pool("cc", model=MODEL, extra=(
        "runtime: claude-code\nworkdir: .\nconcurrency: 8\ntools: {shell: true}\n")))
    swarm = make_swarm(spec, env=api_env(fake_api, key="sk-ant-real-secret-key")).start()
    ids = submit(swarm, [d for d, _ in ESCAPES] + [
        "run: env; cat /proc/1/environ | tr '\\0' '\\n'; ls -a .swarm; ls /claude",
        "run: cat .swarm/t/redis.json .swarm/t/redis.pass logs/cc-1.log 2>&1 | head -c 300"])
    wait_for(lambda: finished(swarm, ids), 120, "every task")
    found = findings_of(swarm, ids)
    for (directive, holds), f in zip(ESCAPES, found):
        assert holds(tmp_path), directive
        assert f["status"] == "done"
    password = (swarm.state.path / "redis.pass").read_text().strip() \
        if (swarm.state.path / "redis.pass").exists() else None
    said = found[-2]["result"] + found[-1]["result"]
    assert "ANTHROPIC_API_KEY=swarm-" in said  # the proxy's token, not the key
    assert "sk-ant-real-secret-key" not in said
    assert password is None or password not in said
    listed = found[-2]["result"].splitlines()
    assert "redis.json" not in listed and "t" not in listed  # .swarm is empty inside
    assert assert_ledger_is_the_bill(swarm, fake_api)["calls"] == 2 * len(ids)


def test_no_process_outlives_a_killed_worker_a_timeout_or_a_cancel(make_swarm, fake_api, work):
    """The CLI and the shells its Bash tool started die with their task: when the
    worker is SIGKILLed (the task then runs again), when the task times out, when it is
    cancelled."""
    fake_api.script = claude_code_script
    swarm = make_swarm(fast_spec(cc_pool(extra="tools: {shell: true}\ntask_timeout: 25s\n")),
                       env=api_env(fake_api)).start()
    [killed] = submit(swarm, ["run: sh -c 'sleep 3' swarm-cc-sleep"])
    wait_for(lambda: cli_processes(work), 60, "the Bash tool's shell")
    first = {p.pid for p in cli_processes(work)}
    os.kill(swarm.worker_pids()["t/" + swarm.status()["host"] + "/cc-1"], signal.SIGKILL)
    wait_for(lambda: not first & {p.pid for p in cli_processes(work)}, 10,
             "the killed worker's CLI and shell to be gone")
    wait_for(lambda: finished(swarm, [killed]), 90, "the task, run again")
    [f] = findings_of(swarm, [killed])
    assert f["status"] == "done" and f["generation"] == 2
    [timed_out, cancelled] = submit(swarm, ["run: sh -c 'sleep 60' swarm-cc-sleep",
                                            "run: sh -c 'sleep 61' swarm-cc-sleep"])
    wait_for(lambda: len(cli_processes(work)) >= 4, 60, "both tasks' shells")
    assert swarm.cli("cancel", cancelled).returncode == 0
    wait_for(lambda: finished(swarm, [timed_out, cancelled]), 60, "both to end")
    f_time, f_cancel = findings_of(swarm, [timed_out, cancelled])
    assert f_time["error"] == "task timeout after 25s"
    assert f_cancel["status"] == "cancelled"
    try:
        wait_for(lambda: not cli_processes(work), 10, "every CLI and shell to be gone")
    except AssertionError:
        left = [(p.pid, p.ppid(), " ".join(p.cmdline())[:150]) for p in cli_processes(work)]
        raise AssertionError(f"left behind: {left}") from None
    assert swarm.redis().hlen(keys.inflight("t")) == 0


def test_the_ledger_is_the_bill_with_faults_and_a_rate_limit_holds_across_workers(
        make_swarm, fake_api, work):
    """429/529/500 answers are retried by the CLI; the proxy withdraws them (not billed)
    and a 429 holds every worker back. rpm 60 is one call a second swarm-wide: however
    slow the machine, no second of the fake's clock sees more than two calls arrive."""
    arrivals: list[float] = []

    def script(request):
        arrivals.append(time.monotonic())
        return claude_code_script(request)

    fake_api.script = script
    fake_api.faults = Faults(rate=0.25, statuses=(429, 529, 500), seed=5)
    fake_api.retry_after = 0.01
    # one task at a time each: both workers have tasks in flight
    spec = fast_spec(cc_pool(workers=2, concurrency=1),
                     extra=f"rate_limits:\n  {MODEL}: {{rpm: 60}}\n")
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    ids = submit(swarm, [f"write f{i}.txt: {i}" for i in range(6)])
    wait_for(lambda: finished(swarm, ids), 180, "every task")
    assert all(f["status"] == "done" for f in findings_of(swarm, ids))
    assert sum(fake_api.errors().values()) > 0, "no faults were injected"
    total = assert_ledger_is_the_bill(swarm, fake_api)
    assert total["calls"] == 12 and total.get("lost_calls", 0) == 0
    host = swarm.status()["host"]
    assert {f["worker_id"] for f in findings_of(swarm, ids)} == {f"t/{host}/cc-1",
                                                               f"t/{host}/cc-2"}
    # a call admitted is on its way; two may arrive close together, never the next
    # second's as well, and over the run no more than one a second
    arrivals.sort()
    assert all(sum(1 for b in arrivals if a <= b < a + 1.0) <= 3 for a in arrivals), arrivals
    assert arrivals[-1] - arrivals[0] >= 0.95 * (len(arrivals) - 2), arrivals


def test_signed_in_with_a_subscription_the_tokens_are_counted_at_list_price(
        make_swarm, fake_api, work):
    """With CLAUDE_CODE_OAUTH_TOKEN and no API key, the proxy sends the subscription's
    token upstream (the fake takes nothing else), the ledger counts every token at list
    price, and `swarm cost` says the subscription covers the pool."""
    fake_api.script = claude_code_script
    fake_api.api_key = "sk-ant-oat-subscription"
    env = {**api_env(fake_api), "ANTHROPIC_API_KEY": "",
           "CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat-subscription"}
    swarm = make_swarm(fast_spec(cc_pool()), env=env).start()
    ids = submit(swarm, ["write paid.txt: by the month"])
    wait_for(lambda: finished(swarm, ids), 120, "the task")
    [f] = findings_of(swarm, ids)
    assert f["status"] == "done" and (work / "paid.txt").read_text() == "by the month"
    total = assert_ledger_is_the_bill(swarm, fake_api)
    assert total["nano"] == f["cost_nano_usd"] > 0
    shown = swarm.cli("cost").stdout
    assert "pool cc: covered by a Claude subscription (CLAUDE_CODE_OAUTH_TOKEN)" in shown
    as_json = json.loads(swarm.cli("cost", "--json").stdout)
    assert as_json["covered_by_subscription"] == ["cc"]


def test_a_lead_hands_a_task_to_a_claude_code_pool(make_swarm, fake_api, work):
    """`swarm run`: the lead's hand-out runs in Claude Code like any task; its finding
    (in the seed's format) comes back to the lead, which cites it."""
    from tests.harness import lead_script as ls

    def script(request):
        if not ls.is_lead(request):
            return claude_code_script(request)
        seen = ls.findings_shown(request)
        if len(request["messages"]) == 1:
            return ls.hand_out(("write lead-made.txt: from the lead", "that it is written"))
        if not seen:
            return ls.wait()
        return ls.synthesis("The file is written.", list(seen))

    fake_api.script = script
    lead = pool("lead", model=MODEL, extra="role: lead\ndelegates_to: [cc]\nconcurrency: 2\n"
                "task_timeout: 5m\n")
    swarm = make_swarm(fast_spec(cc_pool() + lead), env=api_env(fake_api)).start()
    from launcher.client import Swarm as Api

    api = Api("t", swarm.redis())
    run_id = api.run("have a file written")
    info = api.wait_run(run_id, timeout=120)
    assert info["state"] == "done", info
    assert (work / "lead-made.txt").read_text() == "from the lead"
    [task] = info["tasks"]
    [f] = findings_of(swarm, [task["id"]])
    assert f["pool"] == "cc" and f["status"] == "done"
    assert f["files_changed"] == ["lead-made.txt"] and f["tool_calls"] == 1
    assert f["finding_id"] in info["result"]["citations"]
    assert_ledger_is_the_bill(swarm, fake_api)


def test_up_says_in_one_line_when_the_claude_code_extra_is_missing(tmp_path):
    """Without claude-agent-sdk, `swarm up` refuses a claude-code pool and says how to
    install it; nothing starts."""
    import subprocess

    from tests.harness.procs import SWARM_CLI, cli_env

    hide = tmp_path / "hide" / "claude_agent_sdk"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    (tmp_path / "work").mkdir()
    (tmp_path / "swarm.yaml").write_text(fast_spec(cc_pool()))
    env = cli_env({"PYTHONPATH": str(tmp_path / "hide")})
    run = subprocess.run([*SWARM_CLI, "up", "swarm.yaml"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr == (f"swarm: {tmp_path / 'swarm.yaml'}: pools.cc.runtime: runtime: "
                          "claude-code needs claude-agent-sdk: pip install "
                          "'swarm[claude-code]'\n")
    assert not (tmp_path / ".swarm").exists() or not any((tmp_path / ".swarm").iterdir())
