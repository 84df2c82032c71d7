"""The attacks again, end to end: a real swarm, and a fake Messages API that makes the
attacking tool call a task's text asks for; the finding shows what came back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.harness.fake_api import text_reply, tool_use_reply
from tests.harness.procs import cli_env, wait_for
from tests.harness.swarm import api_env, fast_spec, pool

MARK = "ATTACK "


def attacker(request: dict[str, Any]) -> Any:
    """Task text ``ATTACK {"name": ..., "input": ...}``: make that call, then report
    the tool's answer verbatim."""
    first = request["messages"][0]["content"]
    text = first if isinstance(first, str) else first[0]["text"]
    if not text.startswith(MARK):
        return text_reply("plain task done")
    last = request["messages"][-1]["content"]
    results = [p for p in last if isinstance(p, dict) and p.get("type") == "tool_result"] \
        if isinstance(last, list) else []
    if not results:
        call = json.loads(text.removeprefix(MARK).split("\n")[0])
        return tool_use_reply(call["name"], call["input"])
    return text_reply(json.dumps({"error": results[0].get("is_error", False),
                                  "content": results[0]["content"]}))


def attack(swarm: Any, name: str, **tool_input: Any) -> dict[str, Any]:
    task = MARK + json.dumps({"name": name, "input": tool_input})
    done = swarm.cli("submit", task, "--wait", "--json", "--timeout", "60", timeout=90)
    assert done.returncode == 0, done.stderr
    finding = json.loads(done.stdout)
    assert finding["status"] == "done", finding
    return json.loads(finding["result"])


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """The old default: the workdir is the spec's own folder (with .swarm/ and logs/),
    holding a git repository, a virtual environment, links out, a FIFO, a deep tree."""
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("OUTSIDE-SECRET\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    os.symlink("loop", tmp_path / "loop")
    os.symlink(outside, tmp_path / "out")
    os.link(outside / "secret.txt", tmp_path / "linked.txt")
    os.mkfifo(tmp_path / "fifo")
    tmp_path.joinpath(*["d"] * 300).mkdir(parents=True)
    (tmp_path / "victim.txt").write_text("a" * 40 + "!\n")
    return {"work": tmp_path, "outside": outside}


def test_attacks_through_a_real_swarm_are_refused_and_the_worker_lives_on(
        make_swarm: Any, fake_api: Any, layout: dict[str, Path]) -> None:
    work, outside = layout["work"], layout["outside"]
    fake_api.script = attacker
    spec = fast_spec(pool("w", extra="concurrency: 4\ntools: {tool_timeout: 3s}\n"))
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    password = swarm.state.read_redis().password
    spec_text = (work / "swarm.yaml").read_text()

    def refused(name: str, **tool_input: Any) -> str:
        answer = attack(swarm, name, **tool_input)
        assert answer["error"] is True and answer["content"].startswith("refused"), answer
        return str(answer["content"])

    refused("read_file", path=".swarm/t/redis.pass")
    refused("write_file", path=".swarm/t/redis.json", content='{"url": "redis://evil:1"}')
    refused("read_file", path="logs/supervisor.log")
    refused("write_file", path="swarm.yaml", content=spec_text + "# shell: true\n")
    refused("edit_file", path=".git/config", old_string="[core]",
            new_string="[core]\n\tfsmonitor = touch /tmp/pwned")
    refused("write_file", path=".venv/lib/evil.pth", content="import os")
    refused("write_file", path="loop/../out/x", content="pwned")
    assert "loop" in refused("read_file", path="loop")
    refused("read_file", path="fifo")
    grep = attack(swarm, "grep", pattern=password)
    assert grep["error"] is False and grep["content"].startswith("(no matches)\n[... folders")
    wrote = attack(swarm, "write_file", path="linked.txt", content="replaced\n")
    assert wrote["error"] is False
    runaway = attack(swarm, "grep", pattern=r"^(a|a)*$")
    # stopped by the regex's own time limit, or (on a machine too busy for it to fire
    # first) abandoned at the tool's: either way the worker goes on
    assert runaway["error"] is True and ("took too long" in runaway["content"] or
                                         "took longer than 3s" in runaway["content"]), runaway
    deep = attack(swarm, "list_files", pattern="**/*")
    assert "deeper than" in deep["content"] and ".swarm" not in deep["content"]

    assert (outside / "secret.txt").read_text() == "OUTSIDE-SECRET\n"
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (work / "swarm.yaml").read_text() == spec_text
    assert (work / ".git" / "config").read_text() == "[core]\n"
    status = swarm.cli("status", "--json")  # redis.json was not rewritten
    assert status.returncode == 0, status.stderr
    plain = swarm.cli("submit", "a plain task", "--wait", "--json", "--timeout", "30")
    assert json.loads(plain.stdout)["result"] == "plain task done"
    worker = swarm.workers()["w-1"]
    assert str(worker["restarts"]) == "0" and str(worker["generation"]) == "1", worker
    assert not swarm.events("hang")


def test_the_sandboxed_shell_through_a_real_swarm(make_swarm: Any, fake_api: Any,
                                                 layout: dict[str, Path]) -> None:
    work, outside = layout["work"], layout["outside"]
    fake_api.script = attacker
    spec = fast_spec(pool("w", extra="tools: {shell: true, shell_timeout: 10s}\n"))
    swarm = make_swarm(spec, env=api_env(fake_api, key="sk-ant-TOPSECRET")).start()
    password = swarm.state.read_redis().password

    def shell(command: str) -> str:
        answer = attack(swarm, "shell", command=command)
        assert password not in answer["content"]
        assert "TOPSECRET" not in answer["content"]
        return str(answer["content"])

    shell("cat /proc/$PPID/environ; for p in /proc/[0-9]*; do cat $p/environ; done; env")
    shell("cat .swarm/t/redis.pass; grep -r requirepass . 2>/dev/null; cat logs/*")
    shell(f"echo pwned > {outside}/x; echo pwned >> {outside}/secret.txt; "
          "echo '# shell: true' >> swarm.yaml; echo x >> .git/config")
    shell("setsid sleep 3091.5 >/dev/null 2>&1 & echo started")
    supervisor = psutil.Process(swarm.supervisor_pid())
    shell(f"kill -STOP {supervisor.pid}; kill -9 {supervisor.pid}; kill -9 -1; echo tried")
    assert supervisor.status() not in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE)
    assert swarm.all_beating()
    assert "ok" in shell("echo ok > mine.txt && cat mine.txt")
    assert (work / "mine.txt").read_text() == "ok\n"
    assert (outside / "secret.txt").read_text() == "OUTSIDE-SECRET\n"
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (work / ".git" / "config").read_text() == "[core]\n"
    assert "# shell: true" not in (work / "swarm.yaml").read_text()
    wait_for(lambda: not [p for p in psutil.process_iter(["cmdline"])
                          if p.info["cmdline"] == ["sleep", "3091.5"]],
             10, "the sandbox's leftover to die")


def test_a_module_planted_in_the_spec_folder_is_never_imported(tmp_path: Path,
                                                              make_swarm: Any,
                                                              fake_api: Any) -> None:
    planted = ("import pathlib\npathlib.Path(__file__).with_name('PLANTED-' + __name__)"
               ".write_text('imported')\n")
    for module in ("typer", "redis", "anthropic", "json", "decimal", "hooks"):
        (tmp_path / f"{module}.py").write_text(planted)
    swarm = make_swarm(fast_spec(pool("w")), env=api_env(fake_api))
    up = swarm.cli("up", str(swarm.spec_path), "-d", "--wait", "30", timeout=60)
    assert up.returncode == 0, up.stderr
    done = swarm.cli("submit", "a task", "--wait", "--json", "--timeout", "30")
    assert json.loads(done.stdout)["status"] == "done"
    assert swarm.cli("down").returncode == 0
    assert not list(tmp_path.glob("PLANTED-*"))


def test_connection_files_open_to_others_are_not_trusted(make_swarm: Any, fake_api: Any) -> None:
    swarm = make_swarm(fast_spec(pool("w")), env=api_env(fake_api)).start()
    assert swarm.cli("status").returncode == 0
    for path, mode, good in ((swarm.state.redis_file, 0o644, 0o600),
                             (swarm.state.password_file, 0o640, 0o600),
                             (swarm.state.path, 0o777, 0o700)):
        os.chmod(path, mode)
        said = swarm.cli("status")
        assert said.returncode == 1
        assert said.stderr.startswith(f"swarm: not trusting {path}: owner uid")
        assert "Traceback" not in said.stderr and len(said.stderr.splitlines()) == 1
        os.chmod(path, good)
    assert swarm.cli("status").returncode == 0


def test_up_refuses_a_shell_it_cannot_sandbox(tmp_path: Path) -> None:
    """A machine that cannot build the sandbox (here: the interpreter the sandbox runs
    on cannot be started) refuses `shell: true` unless the spec says unsandboxed."""
    spec = tmp_path / "swarm.yaml"
    spec.write_text(fast_spec(pool("w", extra="tools: {shell: true}\n")))
    code = ("import sys; from workers import sandbox; "
            "sandbox.INIT = '/nonexistent/init.py'; "
            "from launcher.cli import main; sys.argv = ['swarm', 'up', sys.argv[1]]; main()")
    said = subprocess.run([sys.executable, "-P", "-c", code, str(spec)], cwd=tmp_path,
                          env=cli_env(), capture_output=True, text=True, timeout=60)
    assert said.returncode == 2, said
    line = said.stderr.strip()
    assert line.startswith(f"swarm: {spec}: pools.w.tools.shell: shell commands cannot be "
                           "sandboxed on this machine (")
    assert "shell_sandbox: false" in line and len(said.stderr.splitlines()) == 1
    assert not (tmp_path / ".swarm").exists()
