"""The `swarm` command's entry point. `swarm statusline` runs on every prompt of a
Claude Code session, so it goes straight to launcher/statusline.py without loading the
CLI (typer, rich, redis-py: about 250 ms); everything else, its --help included, goes to
launcher/cli.py."""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["statusline"] and (len(args) == 1 or (
            len(args) == 3 and args[1] in ("--swarm", "-s"))):
        from launcher.statusline import main as statusline

        sys.exit(statusline(args[2] if len(args) == 3 else None))
    from launcher.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
