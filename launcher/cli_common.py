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
    add_completion=True,  # --install-completion for bash, zsh, fish, PowerShell
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold an API key
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Start and supervise a local swarm of Claude workers coordinated through Redis.",
)


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        try:
            version = metadata.version("swarm")
        except metadata.PackageNotFoundError:
            version = "unknown (not installed)"
        print(f"swarm {version}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", "-V", callback=_version, is_eager=True,
        help="Print swarm's version and exit.")] = False) -> None:
    """Start and supervise a local swarm of Claude workers coordinated through Redis."""
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
        found = locate(name)
    except (NotFound, NotRunning) as exc:
        fail(str(exc))
    if found.state is not None and found.state.embedded():
        _embedded.append(found)
    return found


# the swarms with their own Redis this command found: if that Redis goes away under the
# command (`swarm down` while `submit --wait` waits), the swarm stopped: say that
_embedded: list[Found] = []


def redis_failure(exc: Exception) -> str:
    """The line for a Redis that failed under a command (launcher/cli.py's main)."""
    import time

    for found in _embedded:
        assert found.state is not None
        deadline = time.monotonic() + 3.0  # its supervisor exits right after its Redis
        while found.state.live_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if found.state.live_pid() is None:
            return f"swarm '{found.name}' stopped while this command was using it"
    return f"Redis: {exc}"


HostOption = Annotated[
    Optional[str], typer.Option("--host", help="Which host of the swarm (default: every "
                                "host for down; this one, or the only one, for scale).")
]


def api_for(name: str | None) -> Swarm:
    """The Python API of the swarm a command is about; a swarm that is not running is
    a one-line failure."""
    return api_of(locate_or_fail(name))


def reader_for(name: str | None) -> Swarm:
    """The Python API of the swarm a command that only reads is about (status, tasks,
    show, cost, runs): running, or stopped and read from what it left, without changing
    it (launcher/history.py). What it started for that ends with the command."""
    from launcher import history
    from launcher.connect import NotRunning
    from launcher.state import NotFound

    try:
        found = history.locate(name)
    except (NotFound, NotRunning) as exc:
        fail(str(exc))
    others: tuple[str, ...] = ()
    if found.stopped and name is None and found.state is not None:
        others = history.other_swarms(found.state)
    return history.HistorySwarm(found.name, found.client(), copy=found.close is not None,
                                others=others)


def api_of(found: Found) -> Swarm:
    from launcher.client import Swarm

    return Swarm(found.name, found.client())
