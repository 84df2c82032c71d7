"""The spec's field types (durations, sizes, whole numbers) and the settings of a pool's
runtime: batching through the Message Batches API, and Claude Code as the agent."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from launcher.units import parse_duration, parse_size

# Durations (500ms, 5s, 2m) and sizes (512MB, 1GiB) as the spec's field types.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?(ms|s|m|h)?)+\s*$"},
            ],
            "description": "seconds, or a duration like 500ms, 5s, 2m, 1h30m",
        }
    ),
]

Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string",
                 "pattern": r"^\s*\d+(\.\d+)?\s*([KkMmGgTt][Ii]?[Bb]?|[Bb])?\s*$"},
            ],
            "description": "bytes, or a size like 512MB (powers of 1000) or 1GiB (powers of 1024)",
        }
    ),
]


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a whole number")
    return value


Count = Annotated[int, BeforeValidator(_not_bool)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class Batch(_Model):
    """A pool's requests through the Message Batches API: half price, answers within
    24 hours (most within one)."""

    window: Duration = Field(2.0, gt=0, description="how long a worker gathers its tasks' "
                             "requests into one batch")
    max_requests: Count = Field(10_000, ge=1, le=100_000, description="requests per batch")
    poll: Duration = Field(10.0, gt=0, description="the first wait before asking whether a "
                           "batch ended; then a tenth of its age, up to poll_max")
    poll_max: Duration = Field(300.0, gt=0)
    retries: Count = Field(2, ge=0, le=20, description="sends again of a request that came "
                           "back errored, expired or canceled")


CLAUDE_CODE_SETTINGS = Literal["user", "project", "local"]


class ClaudeCode(_Model):
    """A pool with ``runtime: claude-code``: its tasks run in Claude Code (the
    claude-agent-sdk's CLI), metered by its worker, in a sandbox."""

    tools: list[str] | None = Field(
        None, description="Claude Code's tool names the model may use (an explicit list); "
        "default: from the pool's tools (read: Read, write: Write, edit: Edit, list: "
        "Glob, grep: Grep, shell: Bash)")
    web: bool = Field(False, description="also WebFetch and WebSearch (the network)")
    settings: list[CLAUDE_CODE_SETTINGS] = Field(
        default_factory=list, description="which settings Claude Code reads: user (your "
        "~/.claude settings.json and CLAUDE.md, copied), project and local (the "
        "workdir's .claude/ and CLAUDE.md); none by default")
