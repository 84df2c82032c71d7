"""Reading a Messages API request the way a lead's or a worker's script must: who is
asking (the lead's system prompt or a worker's), what its task is, what the lead has
been shown so far. Fake-API scripts decide their answer from these, never from the
order of calls, so a lead resumed from its checkpoint gets the same answers.
"""

from __future__ import annotations

import re
from typing import Any

from tests.harness.fake_api import Reply, text_reply, tool_use_reply

FINDING = re.compile(r"\[(finding_[0-9a-f]+)\] task (\S+)")


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    found = []
    for block in content or []:
        if block.get("type") == "text":
            found.append(block.get("text", ""))
        elif block.get("type") == "tool_result":
            found.extend(_texts(block.get("content")))
        elif block.get("type") == "tool_use":
            found.append(str(block.get("input")))
    return found


def system_text(request: dict[str, Any]) -> str:
    system = request.get("system") or ""
    return system if isinstance(system, str) else "\n".join(_texts(system))


def is_lead(request: dict[str, Any]) -> bool:
    return "You are the lead of a swarm" in system_text(request)


def task_text(request: dict[str, Any]) -> str:
    """The task (or the goal): the first user message's text."""
    return "\n".join(_texts(request["messages"][0]["content"]))


def shown(request: dict[str, Any]) -> str:
    """Everything swarm told the model after its task: tool results and notes."""
    return "\n".join(t for m in request["messages"][1:] if m["role"] == "user"
                     for t in _texts(m["content"]))


def last_shown(request: dict[str, Any]) -> str:
    last = request["messages"][-1]
    return "\n".join(_texts(last["content"])) if last["role"] == "user" else ""


def asked(request: dict[str, Any]) -> str:
    """Everything the model itself said or asked for so far (its tool inputs too)."""
    return "\n".join(t for m in request["messages"] if m["role"] == "assistant"
                     for t in _texts(m["content"]))


def findings_shown(request: dict[str, Any]) -> dict[str, str]:
    """finding id -> task id, of every finding the lead has been shown."""
    return {fid: task for fid, task in FINDING.findall(shown(request))}


def hand_out(*tasks: tuple[str, str] | dict[str, Any]) -> Reply:
    """The lead hands out tasks: (objective, output) pairs or whole task objects."""
    specs = [t if isinstance(t, dict) else {"objective": t[0], "output": t[1]} for t in tasks]
    return tool_use_reply("hand_out", {"tasks": specs})


def wait() -> Reply:
    return tool_use_reply("wait_for_findings", {"timeout": 60})


def synthesis(text: str, cite: list[str]) -> Reply:
    return text_reply(text + " " + " ".join(f"[{fid}]" for fid in cite))


def worker_answer(request: dict[str, Any], answer: str) -> Reply:
    """A worker that looks before it answers: one list_files, then ``answer``."""
    if len(request["messages"]) == 1:
        return tool_use_reply("list_files", {"pattern": "*"})
    return text_reply(answer)
