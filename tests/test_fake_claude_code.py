"""The real Claude Code CLI (bundled in claude-agent-sdk) against the fake Messages API:
its tools act in its working directory, what it reports spending is what the fake
billed, it calls nothing but ``POST /v1/messages``, and it writes nothing under HOME
outside the config and tmp folders the test gives it. Each task takes about 1-2 s."""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.harness.claude_code import (
    API_KEY,
    MODEL,
    cc_env,
    claude_code_script,
    written_outside,
)
from tests.harness.fake_api import FakeAPI, check_request

USAGE = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
         "cache_read_input_tokens")


@pytest.fixture
def sdk() -> Any:
    sdk = pytest.importorskip("claude_agent_sdk")
    if not (Path(sdk.__file__).parent / "_bundled" / "claude").exists():
        pytest.skip("claude_agent_sdk has no bundled CLI on this platform")
    return sdk


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    return home, cwd.resolve()


def run_task(sdk: Any, fake: FakeAPI, home: Path, cwd: Path, prompt: str) -> list[Any]:
    """Every message of one ``query`` through the real CLI, the ResultMessage last."""
    options = sdk.ClaudeAgentOptions(
        model=MODEL, cwd=str(cwd), allowed_tools=["Write", "Bash"],
        permission_mode="acceptEdits", setting_sources=[], max_turns=6,
        env=cc_env(fake, home))

    async def collect() -> list[Any]:
        return [m async for m in sdk.query(prompt=prompt, options=options)]

    messages = asyncio.run(collect())
    assert isinstance(messages[-1], sdk.ResultMessage), messages[-1]
    return messages


def assert_paid_as_billed(result: Any, fake: FakeAPI) -> None:
    """The CLI's usage and cost are what the fake served, to the token; its price is
    the project's own (genai-prices) for the same tokens."""
    from workers.pricing import PriceBook, Usage

    billed = fake.billed(detail=True)
    assert set(billed["by_model"]) == {MODEL}  # no side calls on another model
    assert {k: result.usage[k] for k in USAGE} == {k: billed[k] for k in USAGE}
    per_model = result.model_usage[MODEL]
    assert (per_model["inputTokens"], per_model["outputTokens"],
            per_model["cacheCreationInputTokens"], per_model["cacheReadInputTokens"]) == (
        billed["input_tokens"], billed["output_tokens"],
        billed["cache_creation_input_tokens"], billed["cache_read_input_tokens"])
    nano = PriceBook().nano(MODEL, Usage(
        billed["input_tokens"], billed["output_tokens"], billed["cache_creation_input_tokens"],
        billed["cache_read_input_tokens"], billed["ephemeral_1h_input_tokens"]))
    assert nano is not None
    assert Decimal(str(result.total_cost_usd)).quantize(Decimal("1e-9")) == Decimal(nano) / 10**9
    assert fake.errors() == {}
    assert billed["streamed"] == billed["responses"] == fake.requests


def assert_left_nothing(home: Path) -> None:
    assert written_outside(home) == []
    psutil = pytest.importorskip("psutil")
    assert psutil.Process().children(recursive=True) == []  # the CLI has exited


@pytest.mark.timeout(60)
def test_write_tool_writes_in_cwd_and_cost_matches(sdk: Any, dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    with FakeAPI(script=claude_code_script, api_key=API_KEY) as fake:
        messages = run_task(sdk, fake, home, cwd, "write hello.txt: hello from the fake model")
        result = messages[-1]
        assert (result.subtype, result.is_error, result.num_turns) == ("success", False, 2)
        assert result.result.startswith("done\nFile created successfully")
        assert (cwd / "hello.txt").read_text() == "hello from the fake model"
        assert sorted(os.listdir(cwd)) == ["hello.txt"]
        assert fake.requests == 2  # the tool call and the answer: nothing else
        assert_paid_as_billed(result, fake)
        first, second = fake.received()
        assert first["stream"] is True and second["stream"] is True
        assert {"Write", "Bash"} <= {t["name"] for t in first["tools"]}
        # the CLI sends the thinking block back with its tool_use (the fake checks it)
        assert [b["type"] for b in second["messages"][1]["content"]] == ["thinking", "tool_use"]
    assert_left_nothing(home)
    # what the CLI keeps: its config and this session's transcript, in the config folder
    config = home / "claude-config"
    assert (config / ".claude.json").exists()
    assert [p.name for p in (config / "projects").glob("*/*.jsonl")] == [
        f"{result.session_id}.jsonl"]


@pytest.mark.timeout(60)
def test_bash_tool_runs_in_cwd(sdk: Any, dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    with FakeAPI(script=claude_code_script, api_key=API_KEY) as fake:
        prompt = "run: pwd > where.txt && echo made-by-bash"
        result = run_task(sdk, fake, home, cwd, prompt)[-1]
        assert (result.subtype, result.is_error) == ("success", False)
        assert (cwd / "where.txt").read_text() == f"{cwd}\n"
        assert result.result == "done\nmade-by-bash"
        assert fake.requests == 2
        assert_paid_as_billed(result, fake)
    assert_left_nothing(home)


@pytest.mark.timeout(60)
def test_steps_in_order_the_later_reads_the_earlier(sdk: Any, dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    with FakeAPI(script=claude_code_script, api_key=API_KEY) as fake:
        prompt = "write notes/a.txt: alpha beta\nrun: cat notes/a.txt"
        result = run_task(sdk, fake, home, cwd, prompt)[-1]
        assert result.result.endswith("\nalpha beta")
        assert fake.requests == 3
        assert_paid_as_billed(result, fake)
        last = fake.received()[-1]
        assert [[b["type"] for b in m["content"]] for m in last["messages"][1:]] == [
            ["thinking", "tool_use"], ["tool_result"], ["thinking", "tool_use"], ["tool_result"]]
    assert_left_nothing(home)


def test_fake_rejects_a_tool_loop_without_its_thinking_block() -> None:
    """The API's rule the CLI's requests meet (thinking enabled on every call)."""
    use = {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "ok"}
    thought = {"type": "thinking", "thinking": "hm", "signature": "s"}
    req: dict[str, Any] = {"model": MODEL, "max_tokens": 32000,
           "thinking": {"type": "enabled", "budget_tokens": 31999, "display": "updates"},
           "messages": [{"role": "user", "content": "go"},
                        {"role": "assistant", "content": [use]},
                        {"role": "user", "content": [result]}]}
    assert "messages.1.content.0.type: Expected `thinking`" in (check_request(req) or "")
    req["messages"][1]["content"] = [thought, use]
    assert check_request(req) is None
    # a second round of the same loop: its first assistant message still needs it
    use2, result2 = {**use, "id": "t2"}, {**result, "tool_use_id": "t2"}
    req["messages"] += [{"role": "assistant", "content": [use2]},
                        {"role": "user", "content": [result2]}]
    assert check_request(req) is None
    req["messages"][1]["content"] = [use]
    assert "messages.1.content.0.type" in (check_request(req) or "")
    # thinking off, or no tool loop: nothing required
    assert check_request({**req, "thinking": {"type": "disabled"}}) is None
    assert check_request({**req, "messages": req["messages"][:1]}) is None
    assert "budget_tokens" in (check_request({**req, "max_tokens": 31999}) or "")
    assert "budget_tokens" in (check_request(
        {**req, "thinking": {"type": "enabled", "budget_tokens": 10}}) or "")
