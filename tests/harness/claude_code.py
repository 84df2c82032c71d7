"""Claude Code (the CLI bundled in the ``claude-agent-sdk`` wheel) against the fake API.

The real CLI, driven by ``claude_agent_sdk.query``, talks to :class:`FakeAPI` on loopback
and nothing else: :func:`cc_env` points it there, keeps its config, transcripts, shell
snapshots and sockets under the test's ``home``, and turns off every call that is not a
model call (telemetry, error reports, auto-update, feedback surveys...). What it sends
is summarised in the notes (claude_code_wire.md): one ``POST /v1/messages?beta=true`` per
model turn, streamed, with ``x-api-key``, ~12 tool definitions, thinking enabled, and
cache breakpoints on the system prompt and the last message block.

:func:`claude_code_script` is a fake model for it, scripted by what each request
contains (never by call order). The task (the last user message written by a person,
not a tool_result, the CLI's ``<system-reminder>`` blocks left out) holds directives,
one a line, done in order:

* ``write FILE: TEXT`` -> the Write tool, ``{"file_path": FILE, "content": TEXT}``, FILE
  relative to the CLI's working directory (read from the request, as the model does);
* ``run: COMMAND`` -> the Bash tool, ``{"command": COMMAND, "description": ...}``.

Each directive's tool_use id is derived from the directive and its place, so the script
knows a directive is done when its tool_result is in the request; when all are done it
answers ``done`` and each tool result's text, one a line (what the CLI reports as the
ResultMessage's ``result``). A tool the request does not offer is answered with text
saying so. When the request enables thinking (Claude Code always does), every answer
starts with a thinking block, as a real model's does, and the CLI must send it back
(the fake's checks reject a tool loop without it, as the API does): other scripts for
Claude Code wrap their replies in :func:`with_thinking` for the same reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from tests.harness.fake_api import FakeAPI, Reply, Request, text_reply

MODEL = "claude-sonnet-4-5"  # priced by the CLI and by genai-prices alike
CONFIG_DIR = "claude-config"  # CLAUDE_CONFIG_DIR, under home
TMP_DIR = "claude-tmp"  # CLAUDE_CODE_TMPDIR, under home
API_KEY = "sk-ant-fake-claude-code"

_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.S)
_CWD = re.compile(r"Primary working directory: (\S+)")
_WRITE = re.compile(r"^\s*write (\S+): (.*)$")
_RUN = re.compile(r"^\s*run: (.+)$")


def cc_env(fake: FakeAPI, home: Path) -> dict[str, str]:
    """The environment for ``ClaudeAgentOptions(env=...)``: the CLI reaches ``fake`` only
    (with the key ``API_KEY``), and writes only under ``home/CONFIG_DIR`` and
    ``home/TMP_DIR`` (besides the files its tools write). The empty values override
    what the parent's environment might hold (the SDK merges ``env`` over it): another
    key or OAuth token, a cloud provider, a proxy, model overrides."""
    config, tmp = home / CONFIG_DIR, home / TMP_DIR
    config.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": fake.url,
        "ANTHROPIC_API_KEY": API_KEY,
        "CLAUDE_CONFIG_DIR": str(config),
        "CLAUDE_CODE_TMPDIR": str(tmp),
        # no telemetry, error reporting, auto-update, feedback or release-notes calls
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_ENABLE_TELEMETRY": "0",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for name in ("ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_MODEL",
                 "ANTHROPIC_SMALL_FAST_MODEL", "ANTHROPIC_CUSTOM_HEADERS",
                 "CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX",
                 "CLAUDE_CODE_USE_FOUNDRY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "http_proxy", "https_proxy", "all_proxy"):
        env[name] = ""
    return env


def written_outside(home: Path) -> list[str]:
    """Files and folders under ``home`` outside the CLI's config and tmp folders."""
    keep = {CONFIG_DIR, TMP_DIR}
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")
                  if p.relative_to(home).parts[0] not in keep)


# --- the fake model ---------------------------------------------------------------------

def _text(value: Any) -> str:
    """The text of a string, a block or a list of blocks (tool_result content included)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text(v) for v in value)
    if isinstance(value, dict) and value.get("type") in ("text", "tool_result"):
        return _text(value.get("text", value.get("content", "")))
    return ""


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def task_of(request: Request) -> tuple[int, str]:
    """(index, text) of the last user message that a person wrote (one without
    tool_result blocks), its ``<system-reminder>`` parts left out; (-1, "") if none."""
    messages = request.get("messages") or []
    for i in range(len(messages) - 1, -1, -1):
        blocks = _blocks(messages[i])
        if messages[i].get("role") != "user" or any(
                b.get("type") == "tool_result" for b in blocks):
            continue
        return i, "\n".join(_REMINDER.sub("", _text(b)).strip() for b in blocks
                            if b.get("type") == "text").strip()
    return -1, ""


def directives(task: str, cwd: str) -> list[tuple[str, dict[str, Any]]]:
    """The task's tool calls, in order: (tool name, input)."""
    calls: list[tuple[str, dict[str, Any]]] = []
    for line in task.splitlines():
        if m := _WRITE.match(line):
            path = m.group(1) if m.group(1).startswith("/") else f"{cwd}/{m.group(1)}"
            calls.append(("Write", {"file_path": path, "content": m.group(2)}))
        elif m := _RUN.match(line):
            calls.append(("Bash", {"command": m.group(1).strip(),
                                   "description": "Run the task's command"}))
    return calls


def _tool_id(where: int, n: int, name: str, args: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps([where, n, name, args], sort_keys=True).encode())
    return "toolu_cc" + digest.hexdigest()[:22]


def _results(request: Request, after: int) -> dict[str, str]:
    """tool_use_id -> the text of its tool_result (reminders left out), in the messages
    after index ``after``."""
    found: dict[str, str] = {}
    for message in (request.get("messages") or [])[after + 1:]:
        for block in _blocks(message):
            if block.get("type") == "tool_result":
                found[str(block.get("tool_use_id"))] = _REMINDER.sub(
                    "", _text(block.get("content", ""))).strip()
    return found


def _cwd(request: Request) -> str:
    """The working directory the CLI tells the model about (its environment reminder)."""
    for message in request.get("messages") or []:
        if message.get("role") == "user" and (m := _CWD.search(_text(_blocks(message)))):
            return m.group(1)
    return "."


def with_thinking(request: Request, reply: Reply, note: str = "thinking") -> Reply:
    """``reply`` as a real model answers a request with thinking enabled (as Claude Code
    sends every request): its content led by a signed thinking block, unless it has
    one. Any script that answers Claude Code with tool_use needs this: the API (and the
    fake) reject the next request of the tool loop without it."""
    thinking = request.get("thinking")
    if (reply.is_error or not isinstance(thinking, dict)
            or thinking.get("type") not in ("enabled", "adaptive")
            or (reply.content and reply.content[0].get("type") in (
                "thinking", "redacted_thinking"))):
        return reply
    signature = "fakesig" + hashlib.sha256(note.encode()).hexdigest()[:32]
    reply.content = [{"type": "thinking", "thinking": note, "signature": signature},
                     *reply.content]
    return reply


def claude_code_script(request: Request) -> Reply:
    """A fake model for Claude Code: do the task's directives with its tools (see the
    module's docstring), then say what they gave."""
    where, task = task_of(request)
    cwd = _cwd(request)
    offered = {t.get("name") for t in request.get("tools") or [] if isinstance(t, dict)}
    done = _results(request, where)
    outputs = []
    for n, (name, args) in enumerate(directives(task, cwd)):
        tool_id = _tool_id(where, n, name, args)
        if tool_id in done:
            outputs.append(done[tool_id])
            continue
        if name not in offered:
            return with_thinking(request, text_reply(f"cannot: no {name} tool was offered"))
        block = {"type": "tool_use", "id": tool_id, "name": name, "input": args}
        return with_thinking(request, Reply(content=[block], stop_reason="tool_use"),
                             f"step {n}: use {name}")
    return with_thinking(request, text_reply("\n".join(["done"] + outputs)), "all done")
