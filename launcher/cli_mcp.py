"""The `swarm` commands for Claude Code and other MCP clients: `swarm mcp` (the swarm's
tools on stdio, launcher/mcp_server.py) and `swarm statusline` (one line for Claude
Code's status bar, launcher/statusline.py). Both import their module only when run:
`swarm statusline` runs on every prompt, and the MCP SDK is heavy."""

from __future__ import annotations

import typer

from launcher.cli_common import SwarmOption, app


@app.command()
def mcp(swarm: SwarmOption = None) -> None:
    """Serve the swarm to an MCP client (Claude Code, Claude Desktop) on stdin/stdout:
    submit tasks, wait for and read findings, search them, start runs, status, cost.
    Starts even if the swarm is not running yet (its tools say so until it is)."""
    from launcher.mcp_server import serve

    serve(swarm)


@app.command()
def statusline(swarm: SwarmOption = None) -> None:
    """One short line for Claude Code's statusLine: workers busy and idle, tasks queued,
    running, done and failed, spend and budget. Always exits 0."""
    from launcher.statusline import main

    raise typer.Exit(main(swarm))
