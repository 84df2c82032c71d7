"""What every `swarm` command shares: the typer app, the two consoles, one-line failures,
and finding the swarm a command is about. The commands are in launcher/cli.py (the
swarm's life) and launcher/cli_work.py (its work and its cost); each parses, calls the
Python API (launcher/client.py), prints.

A user's mistake is one line on stderr and a non-zero exit (2 for bad input, 1 for a
swarm that is not there); never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer
from rich.console import Console

if TYPE_CHECKING:
    from launcher.client import Swarm
    from launcher.connect import Found
    from launcher.spec import SwarmSpec

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold an API key
    help="Start and supervise a local swarm of Claude workers coordinated through Redis.",
)
err = Console(stderr=True, highlight=False, emoji=False)
out = Console(highlight=False, emoji=False, soft_wrap=True)  # a pipe gets whole lines

SwarmOption = Annotated[
    Optional[str], typer.Option("--swarm", "-s", help="Which swarm, if several are here.")
]


def print_json(data: object) -> None:
    """JSON for scripts: plain json.dumps (rich's highlighter costs ~120 ms on big output)."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"swarm: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


def load_or_fail(spec_path: Path) -> SwarmSpec:
    from launcher.spec import SpecError, load

    try:
        return load(spec_path)
    except SpecError as exc:
        fail(str(exc), 2)


def locate_or_fail(name: str | None) -> Found:
    from launcher.connect import NotRunning, locate
    from launcher.state import NotFound

    try:
        return locate(name)
    except (NotFound, NotRunning) as exc:
        fail(str(exc))


HostOption = Annotated[
    Optional[str], typer.Option("--host", help="Which host of the swarm (default: every "
                                "host for down; this one, or the only one, for scale).")
]


def api_for(name: str | None) -> Swarm:
    """The Python API of the swarm a command is about."""
    return api_of(locate_or_fail(name))


def api_of(found: Found) -> Swarm:
    from launcher.client import Swarm

    return Swarm(found.name, found.client())
