"""The ``shell`` tool: ``/bin/sh -c`` in the sandbox of workers/sandbox.py (or, where a
pool says ``shell_sandbox: false``, unsandboxed as the worker's user), with an
environment from an allow-list, a finite timeout, bounded output, and everything the
command started killed when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable
from typing import Any

from workers import sandbox
from workers.jail import VENV_MARK, Fence
from workers.tool_base import ToolError, ToolSettings

# What a shell command's environment may hold besides what the spec names.
SHELL_BASE_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
# Never handed to a shell command, even when a spec names them.
SECRET_ENV = frozenset({"ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "SWARM_REDIS_URL",
                        "REDISCLI_AUTH"})


async def run_shell(command: str, timeout: float, settings: ToolSettings, root: str,
                    fence: Fence) -> str:
    """Run ``command`` in ``root``; its exit code and output, or ``ToolError``."""
    if "\0" in command:
        raise ToolError("the command holds a NUL byte")
    argv = ["/bin/sh", "-c", command]
    env = shell_env(settings, root)
    if settings.shell_sandbox:
        argv = sandbox.command(sandbox_spec(settings, root, fence, env), argv)
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=root, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True)
    output = _Output(settings.max_output_chars)
    reading = asyncio.ensure_future(output.drain(proc.stdout))
    try:
        code = await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        _killpg(proc.pid)
        await _settle(reading, proc.wait())
        raise ToolError(f"timed out after {timeout:g}s: the command and everything "
                        f"it started were killed\n{output.text()}") from None
    finally:
        _killpg(proc.pid)  # also what it left running in the background
        await _settle(reading)
    text = output.text()
    if settings.shell_sandbox and code == sandbox.SETUP_FAILED and text.startswith("sandbox:"):
        raise ToolError(f"the shell's sandbox could not be built: {text.strip()}")
    return f"exit code: {code}\n{text or '(no output)'}"


def shell_env(settings: ToolSettings, root: str) -> dict[str, str]:
    """The command's whole environment: a few harmless basics and the names the spec
    allows, never swarm's secrets."""
    names = (*SHELL_BASE_ENV, *settings.shell_env)
    env = {k: os.environ[k] for k in names if k in os.environ and k not in SECRET_ENV}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = "/tmp" if settings.shell_sandbox else root
    env["TERM"] = "dumb"
    return env


def sandbox_spec(settings: ToolSettings, root: str, fence: Fence,
                 env: dict[str, str]) -> sandbox.SandboxSpec:
    """What the sandbox shows: the workdir writable with swarm's places in it hidden or
    read-only, the Python installation and ``shell_paths`` read-only."""
    inside = [p for p in (*fence.readonly, *fence.import_dirs)
              if _within(p, root) and p != root]
    inside += _top_level_protected(root)
    outside = [p for p in (sys.base_prefix, sys.prefix, *settings.shell_paths)
               if os.path.exists(p) and not _within(p, root)]
    return sandbox.SandboxSpec(
        workdir=root, hidden=tuple(dict.fromkeys(fence.hidden)),
        readonly=tuple(dict.fromkeys(inside + outside)),
        network=settings.shell_network, env=env)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _top_level_protected(root: str) -> list[str]:
    """``.git`` and the virtual environments at the top of the workdir: read-only in the
    sandbox as they are to the file tools."""
    found = []
    try:
        with os.scandir(root) as listing:
            for item in listing:
                if not item.is_dir(follow_symlinks=False):
                    continue
                if item.name == ".git" or os.path.lexists(os.path.join(item.path, VENV_MARK)):
                    found.append(item.path)
    except OSError:
        pass
    return found


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # gone already
        os.killpg(pgid, signal.SIGKILL)


async def _settle(*aws: Awaitable[Any], timeout: float = 2.0) -> None:
    """Wait briefly for cleanup awaitables; never raise (they are cleanup)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*aws, return_exceptions=True), timeout)


class _Output:
    """Combined output of a command, bounded: its head and tail are kept."""

    def __init__(self, max_chars: int) -> None:
        self.half = max(1, max_chars // 2)
        self.head, self.tail, self.dropped = bytearray(), bytearray(), 0

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        while stream is not None and (chunk := await stream.read(65536)):
            room = self.half - len(self.head)
            self.head += chunk[:room]
            self.tail += chunk[max(room, 0):]
            if len(self.tail) > self.half:
                self.dropped += len(self.tail) - self.half
                del self.tail[: len(self.tail) - self.half]

    def text(self) -> str:
        head = self.head.decode("utf-8", errors="replace")
        tail = self.tail.decode("utf-8", errors="replace")
        gap = f"\n[... {self.dropped} bytes of output cut ...]\n" if self.dropped else ""
        return head + gap + tail
