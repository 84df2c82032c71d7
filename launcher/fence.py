"""What on this host is swarm's own, and so out of the tools' reach (a
:class:`workers.jail.Fence`); and which workdirs are refused outright.

- hidden (no read, no write, no listing): the state folder (``.swarm/``: every swarm's
  Redis password, connection file and data) and the logs;
- read-only: the spec, swarm's own code, the Python installation and its site folders;
- no new entry: the folders on ``sys.path`` (a module planted there would be imported).

A pool whose workdir lies inside a hidden or read-only place, or is itself on sys.path,
could do nothing but harm, so the spec is refused.
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import launcher
import workers
from workers.jail import Fence

if TYPE_CHECKING:
    from launcher.spec_model import SwarmSpec


def fence_for(spec: SwarmSpec) -> Fence:
    """The fence of a loaded spec (its paths are resolved)."""
    hidden = (spec.state_dir, spec.logs.dir)
    readonly = [*([spec.source] if spec.source else []), *code_dirs(), *python_dirs()]
    return Fence(hidden=_real(hidden), readonly=_real(readonly), import_dirs=_real(
        [Path(p) for p in sys.path if p and os.path.isdir(p)]))


def code_dirs() -> list[Path]:
    """swarm's own packages, wherever they are installed from."""
    return [Path(launcher.__file__).parent, Path(workers.__file__).parent]


def python_dirs() -> list[Path]:
    """The interpreter's installation and every site folder it imports from."""
    found = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    found += site.getsitepackages()
    if site.ENABLE_USER_SITE:
        found.append(site.getusersitepackages())
    return [Path(p) for p in found if p]


def workdir_problem(workdir: Path, fence: Fence) -> str | None:
    """Why a pool may not have ``workdir`` (a real path), or None."""
    places = {_identity(p): ("swarm's state or logs", p) for p in fence.hidden}
    places.update({_identity(p): ("swarm's own files or the Python installation", p)
                   for p in fence.readonly})
    places.pop(None, None)
    if _identity(str(workdir)) in {_identity(p) for p in fence.import_dirs} - {None}:
        return (f"{workdir} is on Python's import path (sys.path, PYTHONPATH?): a module "
                "written there would be imported by swarm; give the pool a folder that "
                "is not")
    for folder in (workdir, *workdir.parents):
        found = places.get(_identity(str(folder)))
        if found is not None:
            what, path = found
            return (f"{workdir} is inside {path} ({what}), which the tools may not "
                    "change; give the pool a folder of its own material")
    return None


def _real(paths: list[Path] | tuple[Path, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(os.path.realpath(p) for p in paths))


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)
