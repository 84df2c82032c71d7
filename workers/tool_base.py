"""What every tool shares: its settings (from the pool's ``tools`` in the spec), the
error a model reads when a tool refuses or fails, and the checks of a tool call's
arguments (a model may send anything)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class ToolError(Exception):
    """A refusal or failure; its message is shown to the model as an error result."""


@dataclass(frozen=True)
class ToolSettings:
    read: bool = True
    write: bool = True
    edit: bool = True
    list: bool = True
    grep: bool = True
    shell: bool = False
    hand_back: bool = True  # the worker may say a task needs deeper reasoning
    findings: bool = True  # search the swarm's findings, read one whole
    ask_librarian: bool = True  # where the swarm has a librarian
    librarian_timeout: float = 60.0  # an unanswered question is given up after this
    shell_timeout: float = 30.0
    shell_sandbox: bool = True
    shell_network: bool = False
    shell_env: tuple[str, ...] = ()  # names passed from the worker's environment
    shell_paths: tuple[str, ...] = ()  # more of the system the sandbox shows, read-only
    max_read_bytes: int = 256_000
    max_output_chars: int = 20_000
    max_file_bytes: int = 4_000_000  # the largest file edit or grep takes, or write makes
    tool_timeout: float = 30.0  # a file tool's time, at most

    @classmethod
    def of(cls, settings: dict[str, Any]) -> ToolSettings:
        """From a spec's ``tools`` mapping (lists become tuples)."""
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in settings.items()}
        return cls(**values)


# --- a tool call's arguments ----------------------------------------------------------

def arg(args: dict[str, Any], key: str, kind: type | tuple[type, ...],
         default: Any = ...) -> Any:
    if key not in args or args[key] is None:
        if default is ...:
            raise ToolError(f"missing required argument: {key}")
        return default
    value = args[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    bad_bool = isinstance(value, bool) and bool not in kinds
    if not isinstance(value, kind) or bad_bool:
        raise ToolError(f"argument {key} has the wrong type: {type(value).__name__}")
    return value


def positive(args: dict[str, Any], key: str) -> int | None:
    value = arg(args, key, int, None)
    if value is not None and value < 1:
        raise ToolError(f"argument {key} must be at least 1")
    return value


def seconds(args: dict[str, Any], key: str, default: float) -> float:
    value = float(arg(args, key, (int, float), default))
    if not math.isfinite(value) or value <= 0:
        raise ToolError(f"argument {key} must be a positive number of seconds")
    return value


def clip(text: str, limit: int, what: str = "chars") -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit)
    cut = cut if cut > 0 else limit
    return text[:cut] + f"\n[... truncated: {len(text) - cut} more {what}]"


def one_line(text: str | None, limit: int) -> str:
    """``text`` on one line (whitespace runs folded), cut at ``limit`` with an ellipsis."""
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"
