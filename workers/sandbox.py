"""A sandbox for the model's shell commands, built from Linux namespaces.

The ``shell`` tool runs commands an untrusted model wrote (text it read may tell it to
attack). Run through :func:`command`, such a command sees only the system folders
(read-only), its workdir (read-write, less the spec's ``hidden`` and ``readonly``
paths), a private /tmp and /dev, and its own processes; it has no network unless asked,
no capability even when the worker is root, exactly the environment it is given, and
everything it starts dies with it or with the worker. ``workers/_sandbox_init.py``
builds it, in a process of its own (``python -I -S``: the set-up forks, mounts and
execs, which a ``preexec_fn`` in a threaded worker must not, and it imports nothing from
the project or the current folder); its docstring says what is isolated and what is not
(no seccomp filter, no cgroup limits).

Nothing is installed for this: only the kernel's unprivileged user namespaces, which
:func:`probe` checks (some distributions or containers turn them off).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

INIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_init.py")
SETUP_FAILED = 125  # the exit code of a sandbox that could not be built
PROBE_TIMEOUT = 5.0
PROBE_PATH = "/usr/bin:/bin"


@dataclass(frozen=True)
class SandboxSpec:
    """What a sandboxed command sees. Paths are absolute; each is resolved (symlinks
    followed) when the command is made; a hidden or readonly one that does not exist
    then is skipped."""

    workdir: str  # bound read-write at the same path inside; the command starts there
    # absent or empty inside: an empty read-only folder over a folder, an empty
    # read-only file over a file (inside the workdir or in a read-only path)
    hidden: tuple[str, ...] = ()
    # bound read-only at the same path: inside the workdir (over its read-write bind) or
    # outside it (more of the system, e.g. the Python installation)
    readonly: tuple[str, ...] = ()
    # False: a network namespace of its own, with only loopback (up)
    network: bool = False
    env: dict[str, str] = field(default_factory=dict)  # the command's whole environment...
    # ...plus these names (or prefixes ending in '*') from the environment the sandbox
    # is started with, less ``deny`` (a wrapper's caller sets them: Claude Code's SDK)
    inherit: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    # (source, path inside): folders bound read-write at a path of their own
    binds: tuple[tuple[str, str], ...] = ()


def command(spec: SandboxSpec, argv: list[str]) -> list[str]:
    """The argv that runs ``argv`` in the sandbox ``spec``. Start it from this very
    process (its parent must be us: it exits at once otherwise, and dies when we do).
    It exits with the command's exit code (128+signal if killed), or 125 and one line
    ``sandbox: <step>: <reason>`` on stderr if the sandbox could not be built."""
    config = {
        "workdir": os.path.realpath(spec.workdir),
        "hidden": [os.path.realpath(p) for p in spec.hidden],
        "readonly": [os.path.realpath(p) for p in spec.readonly],
        "network": spec.network,
        "env": dict(spec.env),
        "inherit": list(spec.inherit),
        "deny": list(spec.deny),
        "binds": [[os.path.realpath(a), b] for a, b in spec.binds],
        "argv": list(argv),
        "parent": os.getpid(),
    }
    # not ASCII-escaped: one argument may hold 128 KiB, as `sh -c COMMAND` alone may
    return [sys.executable, "-I", "-S", INIT, json.dumps(config, ensure_ascii=False)]


def wrapper(spec: SandboxSpec, argv: list[str], path: str) -> str:
    """Write an executable at ``path`` that runs ``argv`` plus its own arguments in the
    sandbox ``spec``, keeping its standard streams: for a program that starts the
    command itself (Claude Code's SDK takes it as ``cli_path``). Its caller must be
    this process, as for :func:`command`."""
    import shlex

    line = " ".join(shlex.quote(part) for part in command(spec, argv))
    with open(path, "w", encoding="utf-8") as out:
        out.write(f"#!/bin/sh\nexec {line} \"$@\"\n")
    os.chmod(path, 0o700)
    return path


@functools.cache
def probe() -> str | None:
    """None if a sandbox can be built here (one is: ``true`` runs in it), else one line
    saying which step failed and why. Cached for the process."""
    with tempfile.TemporaryDirectory(prefix="sandbox-probe-") as workdir:
        spec = SandboxSpec(workdir=workdir, env={"PATH": PROBE_PATH})
        try:
            done = subprocess.run(command(spec, ["true"]), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"cannot build a sandbox: no answer within {PROBE_TIMEOUT:g}s"
        except OSError as exc:
            return f"cannot build a sandbox: cannot run {sys.executable}: {exc.strerror}"
    if done.returncode == 0:
        return None
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    reason = lines[-1].removeprefix("sandbox: ") if lines else "no message"
    return f"cannot build a sandbox (exit code {done.returncode}): {reason}"
