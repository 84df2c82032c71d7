"""Claude Code as a worker runtime: a pool with ``runtime: claude-code`` runs each task in
the Claude Code CLI (through claude-agent-sdk), and keeps what makes swarm worth using.

- **Metered**: the CLI's ``ANTHROPIC_BASE_URL`` is this worker's metering proxy
  (workers/api_proxy.py) on loopback, and its API key a token that names the task. The
  proxy registers each call before it goes on to the real API with the real credentials,
  settles it from the stream's final usage, and holds the swarm's rate limits and the
  task's cost limit. The real key never reaches the CLI.
- **Confined**: the CLI runs in swarm's sandbox (workers/sandbox.py) as the pid 1 of its
  own namespaces: the workdir is the one folder it can write, swarm's own files are
  hidden or read-only as for the built-in tools, its config and temp files live in this
  worker's folder under the state folder (seen at /claude inside), its environment is an
  allow-list with no secret, and when it ends, however it ends, or its worker dies,
  everything it started dies with it (the Bash tool's shells included). It shares the
  host's network (to reach the proxy); its network tools are off unless the spec asks.
  It reads no settings but those the spec names; non-essential traffic is off.
- **Findings as today**: the result text, the turns, the tools it ran, the files its
  edit tools wrote, and the cost as the ledger counted it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from workers.agent import FINDING_ID, Outcome, _user_text
from workers.config import WorkerConfig
from workers.ledger import Ledger
from workers.payload import Task
from workers.sandbox import SandboxSpec, wrapper
from workers.tools import Toolbox

log = logging.getLogger("swarm.worker")

INSIDE = "/claude"  # where this worker's folder is seen in the sandbox
EDIT_TOOLS = ("Write", "Edit", "MultiEdit", "NotebookEdit")
# what the CLI may take from the environment the SDK gives it (the token, the SDK's own
# switches); never a credential of the user's
INHERIT = ("ANTHROPIC_API_KEY", "CLAUDE_CODE_*", "CLAUDE_AGENT_SDK_*", "PWD")
DENY = ("CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX")


def missing() -> str | None:
    """Why Claude Code cannot run here (one line), or None."""
    try:
        import claude_agent_sdk  # noqa: F401
    except ImportError:
        return ("runtime: claude-code needs claude-agent-sdk: "
                "pip install 'swarm[claude-code]'")
    return None if bundled_cli() else "claude-agent-sdk has no bundled Claude Code CLI"


def bundled_cli() -> str | None:
    import claude_agent_sdk

    path = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    return str(path) if path.is_file() else None


def prepare(cfg: WorkerConfig, proxy_url: str) -> str:
    """This worker's folder (config, temp, home: fresh at each start) and the wrapper
    that runs the CLI in the sandbox; returns the wrapper's path."""
    home = Path(str(cfg.claude_code["home"]))
    shutil.rmtree(home, ignore_errors=True)
    for sub in ("config", "tmp", "home"):
        (home / sub).mkdir(parents=True, mode=0o700, exist_ok=True)
    if "user" in list(cfg.claude_code.get("settings") or []):
        _copy_user_settings(home / "config")
    cli = bundled_cli()
    assert cli is not None
    spec = SandboxSpec(
        workdir=os.path.abspath(cfg.workdir), hidden=cfg.fence.hidden,
        readonly=(*cfg.fence.readonly, str(Path(cli).parent)), network=True,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": f"{INSIDE}/home",
             "CLAUDE_CONFIG_DIR": f"{INSIDE}/config", "CLAUDE_CODE_TMPDIR": f"{INSIDE}/tmp",
             "TMPDIR": f"{INSIDE}/tmp", "ANTHROPIC_BASE_URL": proxy_url,
             "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
             "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
             "LANG": os.environ.get("LANG", "C.UTF-8")},
        inherit=INHERIT, deny=DENY, binds=((str(home), INSIDE),))
    return wrapper(spec, [cli], str(home) + ".sh")


def end_cli(token: str) -> None:
    """Kill the task's sandbox if it is still there: the SDK leaves its CLI running when
    the query is cancelled (a timeout, `swarm cancel`). Killing the sandbox's outer
    process kills its namespace, the CLI and its shells with it. It is the child of
    this process whose environment holds the task's token."""
    import psutil

    for child in psutil.Process().children():
        try:
            if child.environ().get("ANTHROPIC_API_KEY") == token:
                child.kill()
        except psutil.Error:
            continue  # ended meanwhile, or not ours to read


def _prompt(appended: str) -> Any:
    """Claude Code's own system prompt, with the swarm's shared context after it."""
    return {"type": "preset", "preset": "claude_code", **({"append": appended} if appended
                                                          else {})}


def _copy_user_settings(config: Path) -> None:
    """``settings: [user]``: the user's own settings.json and CLAUDE.md, copied (the
    CLI never sees the user's ~/.claude itself, its credentials or its history)."""
    source = Path(os.environ.get("CLAUDE_CONFIG_DIR") or Path.home() / ".claude")
    for name in ("settings.json", "CLAUDE.md"):
        if (source / name).is_file():
            shutil.copyfile(source / name, config / name)


class CodeAgent:
    """Runs a task in Claude Code: the same interface as workers.agent.Agent."""

    def __init__(self, cfg: WorkerConfig, ledger: Ledger, max_cost_nano: int | None) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.proxy: Any = None
        self.cli = ""
        self.max_cost_nano = max_cost_nano
        self.tools = [str(t) for t in list(cfg.claude_code.get("tools") or [])]
        self.settings = [str(s) for s in list(cfg.claude_code.get("settings") or [])]
        self.missing_key: str | None = None
        self.caller = None  # a librarian's question never comes here
        # a CLI takes most of a CPU-second to start: a few at a time, or a burst of
        # tasks starves the worker's own loop (its heartbeat) on a small machine
        self.starting = asyncio.Semaphore(max(2, os.cpu_count() or 2))

    async def start(self) -> None:
        """The metering proxy on loopback, and the sandboxed CLI's wrapper (at boot)."""
        import httpx2

        from workers.api_proxy import MeteredProxy

        http = httpx2.AsyncClient(timeout=httpx2.Timeout(600.0, connect=10.0),
                                  limits=httpx2.Limits(max_connections=1000,
                                                       max_keepalive_connections=100))
        upstream = os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"
        key = os.environ.get("ANTHROPIC_API_KEY") or None
        token = os.environ.get("ANTHROPIC_AUTH_TOKEN") or None
        oauth = os.environ.get("CLAUDE_CODE_OAUTH_TOKEN") or None
        self.proxy = MeteredProxy(upstream, {self.cfg.model: self.ledger}.get, http,
                                  api_key=key, auth_token=token or (oauth if not key else None),
                                  oauth=bool(oauth and not key and not token))
        url = await self.proxy.start()
        self.cli = prepare(self.cfg, url)
        log.info("Claude Code runtime: metering proxy at %s, tools %s", url,
                 ",".join(self.tools) or "none")

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop()

    async def run(self, task: Task, toolbox: Toolbox, context: str | None,
                  task_id: str = "", run_context: str | None = None) -> Outcome:
        from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKError, query

        outcome = Outcome("failed", "")
        run = str(task.extra.get("run") or "")
        cap = task.extra.get("max_cost_nano")
        cap = cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 and (
            self.max_cost_nano is None or cap < self.max_cost_nano) else self.max_cost_nano
        token = self.proxy.open_task(task_id, run, cap)
        appended = "\n\n".join(t for t in (context, run_context) if t)
        options = ClaudeAgentOptions(
            model=self.cfg.model, cwd=os.path.abspath(self.cfg.workdir), cli_path=self.cli,
            tools=self.tools, allowed_tools=self.tools, permission_mode="dontAsk",
            setting_sources=self.settings,  # type: ignore[arg-type]
            max_turns=self.cfg.max_turns, env={"ANTHROPIC_API_KEY": token},
            system_prompt=_prompt(appended),
            stderr=lambda line: log.info("task %s: claude: %s", task_id, line[:500]))
        started = False
        await self.starting.acquire()
        try:
            async for message in query(prompt=_user_text(task), options=options):
                if not started:  # its first message: the CLI is up
                    started = True
                    self.starting.release()
                self._read(message, outcome)
        except ClaudeSDKError as exc:
            outcome.status, outcome.error = "failed", f"Claude Code failed: {exc}"[:1000]
        finally:
            if not started:
                self.starting.release()
            end_cli(token)
            meter = self.proxy.close_task(token)
            outcome.usage, outcome.calls, outcome.nano = meter.usage, meter.calls, meter.nano
            if meter.refused and outcome.status != "done":
                outcome.error = (f"{outcome.error or 'failed'} ({meter.refused} call(s) "
                                 "refused: the task's cost limit)")
        toolbox.files_changed.update(outcome.files_changed)  # the runner reports these
        outcome.citations = sorted(set(FINDING_ID.findall(task.description + outcome.result)))
        return outcome

    def _read(self, message: Any, outcome: Outcome) -> None:
        kind = type(message).__name__
        if kind == "AssistantMessage":
            for block in message.content:
                if type(block).__name__ != "ToolUseBlock":
                    continue
                outcome.tool_calls += 1
                path = block.input.get("file_path") or block.input.get("notebook_path")
                if block.name in EDIT_TOOLS and isinstance(path, str):
                    outcome.files_changed.append(self._relative(path))
        elif kind == "ResultMessage":
            outcome.turns = int(message.num_turns or 0)
            outcome.stop_reason = message.stop_reason
            outcome.result = str(message.result or "")
            if message.total_cost_usd is not None:  # what the CLI itself counted
                outcome.extra["claude_code_cost_usd"] = message.total_cost_usd
            if message.is_error or message.subtype != "success":
                outcome.status = "failed"
                said = "; ".join(message.errors or []) or outcome.result or message.subtype
                outcome.error = f"Claude Code ended with {message.subtype}: {said}"[:1000]
            else:
                outcome.status = "done"

    def _relative(self, path: str) -> str:
        workdir = os.path.abspath(self.cfg.workdir)
        full = os.path.normpath(os.path.join(workdir, path))
        return os.path.relpath(full, workdir) if full.startswith(workdir + os.sep) else full
