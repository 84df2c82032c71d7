"""Fixtures that run real swarms: a real supervisor process, real forked workers and
the real embedded Redis, all under a temporary folder and all ended by the test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

from launcher.state import StateDir
from procs import processes_under, wait_for  # noqa: F401 - the tests import them from here

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
# as the `swarm` script runs it: -P keeps the current folder (a workdir) off sys.path
SWARM_CLI = [sys.executable, "-P", "-m", "launcher.cli"]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # (no empty entry: Python reads one as the current folder)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(TESTS), str(ROOT), *env.get("PYTHONPATH", "").split(os.pathsep)] if p)
    env.pop("SWARM_REDIS_URL", None)
    env["COLUMNS"] = "200"
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        env.pop(name, None)  # never the developer's real key or endpoint
    env.update(extra or {})
    return env


class Swarm:
    """A swarm spec in a temporary folder, and the supervisor running it."""

    def __init__(self, folder: Path, spec: str, name: str = "t",
                 env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.env = env or {}
        self.name = name
        self.spec_path = folder / "swarm.yaml"
        self.spec_path.write_text(textwrap.dedent(spec))
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = folder / "up.out"

    @property
    def state(self) -> StateDir:
        return StateDir(self.folder / ".swarm" / self.name)

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SWARM_CLI, *args], cwd=self.folder,
            env=cli_env(self.env),
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def start(self, ready: bool = True) -> Swarm:
        """``swarm up`` in the foreground (as a child of the test), then wait for it."""
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                [*SWARM_CLI, "up", str(self.spec_path)],
                cwd=self.folder, env=cli_env(self.env), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for(lambda: self.state.read_redis() is not None or self.proc.poll() is not None,
                 20, "the supervisor to start Redis")
        assert self.proc.poll() is None, self.output.read_text()
        if ready:
            wait_for(self.all_beating, 20, "every worker to heartbeat")
        return self

    def redis(self) -> Any:
        target = self.state.read_redis()
        assert target is not None, "the swarm has no Redis recorded"
        return target.sync(socket_timeout=5)

    def status(self) -> dict[str, Any]:
        from launcher.status import collect

        return collect(self.redis(), self.name)

    def workers(self) -> dict[str, dict[str, Any]]:
        """Status rows by slot name (``a-1``): one host's workers."""
        return {row["slot"]: row for row in self.status()["workers"]}

    def all_beating(self) -> bool:
        try:
            rows = self.status()["workers"]
        except Exception:  # noqa: BLE001 - not up yet
            return False
        return bool(rows) and all(r["state"] in ("idle", "busy") for r in rows)

    def events(self, kind: str | None = None) -> list[dict[str, str]]:
        from workers import keys

        entries = self.redis().xrange(keys.events(self.name))
        return [fields for _, fields in entries if kind is None or fields["kind"] == kind]

    def supervisor_pid(self) -> int:
        pid = self.state.read_pid()
        assert pid is not None
        return pid

    def stop(self) -> None:
        """End everything the test started, whatever state it is in."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        pid = self.state.live_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        for proc in processes_under(self.folder):
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(processes_under(self.folder), timeout=5)


@pytest.fixture
def make_swarm(tmp_path: Path):  # type: ignore[no-untyped-def]
    made: list[Swarm] = []

    def make(spec: str, name: str = "t", env: dict[str, str] | None = None) -> Swarm:
        swarm = Swarm(tmp_path, spec, name, env)
        made.append(swarm)
        return swarm

    yield make
    for swarm in made:
        swarm.stop()


@pytest.fixture
def fake_api():  # type: ignore[no-untyped-def]
    """A fake Messages API on loopback, for the real SDK in the workers."""
    from fake_api import FakeAPI

    server = FakeAPI().start()
    yield server
    server.stop()


def api_env(server: Any, key: str = "test-key") -> dict[str, str]:
    return {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": key}


def fast_spec(pools: str, name: str = "t", extra: str = "") -> str:
    """A spec with short timings, so supervision tests take seconds."""
    return f"name: {name}\nstop_grace: 3s\nkill_grace: 500ms\n{extra}pools:\n" + textwrap.indent(
        textwrap.dedent(pools), "  "
    )


POOL = """\
{name}:
  model: {model}
  workers: {workers}
  heartbeat: {{expiry: {expiry}, interval: {interval}}}
  restart:
    backoff: {{initial: 50ms, max: 1s}}
    max_restarts: {max_restarts}
    window: 30s
    reset_after: 10s
{extra}"""


def pool(name: str, workers: int = 1, expiry: str = "1500ms", interval: str = "300ms",
         max_restarts: int = 5, extra: str = "", model: str = "test-model") -> str:
    return POOL.format(name=name, workers=workers, expiry=expiry, interval=interval,
                       max_restarts=max_restarts, extra=textwrap.indent(extra, "  "),
                       model=model)


def loads(text: str) -> Any:
    return json.loads(text)
