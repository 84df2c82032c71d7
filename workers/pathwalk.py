"""One path walked from the workdir's descriptor, a component at a time, the kernel never
following a symlink for us (see workers/jail.py for why and what is then checked). The
walk ends at a :class:`Place`: an open folder and a name in it."""

from __future__ import annotations

import os
import stat
from collections import deque
from dataclasses import dataclass
from typing import Protocol

MAX_LINKS = 40  # symlinks followed in one walk, as the kernel's own limit
MAX_DEPTH = 128  # folders below the workdir a walk or a listing goes
PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
GIT = ".git"
VENV_MARK = "pyvenv.cfg"

Identity = tuple[int, int]


class PathError(Exception):
    """A path the tools cannot use; ``str()`` is the message for the model."""


@dataclass
class Place:
    """Where a walk ended: an open folder and a name in it ('' for the folder itself)."""

    dir_fd: int
    name: str
    folder: str  # the folder's path relative to the workdir, '' at the top
    readonly: bool  # inside a read-only place
    import_dir: bool  # the folder is on sys.path

    @property
    def rel(self) -> str:
        return f"{self.folder}/{self.name}".strip("/") if self.name else self.folder


class Rules(Protocol):
    """What a walk asks of the workdir it walks (a :class:`workers.jail.Jail`)."""

    fd: int
    top_readonly: bool
    top_import: bool

    def relative_parts(self, path: str) -> list[str]: ...
    def hidden(self, identity: Identity) -> bool: ...
    def readonly(self, identity: Identity) -> bool: ...
    def imports(self, identity: Identity) -> bool: ...


class Walker:
    """One walk of a path from the workdir: a stack of open folders, closed at the end."""

    def __init__(self, jail: Rules, path: str) -> None:
        self.jail = jail
        self.path = path
        self.stack: list[tuple[int, str, bool, bool]] = []  # fd, name, readonly, import

    def __enter__(self) -> Walker:
        return self

    def __exit__(self, *exc: object) -> None:
        while len(self.stack) > 0:
            self._pop()

    def walk(self, make_dirs: bool) -> Place:
        jail, path = self.jail, self.path
        parts = deque(jail.relative_parts(path))
        self._to_top()
        links = 0
        while parts:
            name = parts.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                if len(self.stack) == 1:
                    raise PathError(f"refused: path escapes the working directory: {path}")
                self._pop()
                continue
            fd = self._step(name, make_dirs and _more(parts))
            if fd is None:
                if _more(parts):
                    raise PathError(f"no such folder: {name} (in {path})")
                return self._place(name)  # the last name, not there (yet)
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink("", dir_fd=fd)
                os.close(fd)
                links += 1
                if links > MAX_LINKS:
                    raise PathError(f"refused: too many levels of symbolic links "
                                    f"(a loop?): {path}")
                self._follow(target, parts)
            elif stat.S_ISDIR(st.st_mode):
                self._push(fd, name, st)
            else:
                os.close(fd)
                if _more(parts):
                    raise PathError(f"not a folder: {name} (in {path})")
                return self._place(name)
        return self._place("")

    def _step(self, name: str, make_dir: bool) -> int | None:
        """A descriptor of ``name`` in the current folder (not followed); None if it does
        not exist and is not to be made."""
        parent = self.stack[-1][0]
        try:
            return os.open(name, PATH_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not make_dir:
                return None
        place = self._place(name)
        check_writable(place, self.path)
        try:
            os.mkdir(name, 0o777, dir_fd=parent)
        except FileExistsError:
            pass  # made by someone else meanwhile: walk into whatever it is
        return os.open(name, PATH_FLAGS, dir_fd=parent)

    def _follow(self, target: str, parts: deque[str]) -> None:
        if target.startswith("/"):
            rel_parts = self.jail.relative_parts(target)  # refuses a target outside
            self._to_top()
        else:
            rel_parts = target.split("/")
        parts.extendleft(reversed(rel_parts))

    def _push(self, fd: int, name: str, st: os.stat_result) -> None:
        jail = self.jail
        ident = identity(st)
        if jail.hidden(ident):
            os.close(fd)
            raise PathError(hidden_message(self.path))
        if len(self.stack) > MAX_DEPTH:
            os.close(fd)
            raise PathError(f"refused: {self.path} is more than {MAX_DEPTH} folders deep")
        readonly = (self.stack[-1][2] or name == GIT or jail.readonly(ident)
                    or is_venv(fd))
        self.stack.append((fd, name, readonly, jail.imports(ident)))

    def _pop(self) -> None:
        fd = self.stack.pop()[0]
        if fd != self.jail.fd:
            os.close(fd)

    def _to_top(self) -> None:
        while self.stack:
            self._pop()
        jail = self.jail
        self.stack.append((jail.fd, "", jail.top_readonly, jail.top_import))

    def _place(self, name: str) -> Place:
        fd, _, readonly, import_dir = self.stack[-1]
        folder = "/".join(entry[1] for entry in self.stack[1:])
        return Place(fd, name, folder, readonly, import_dir)


def relative_parts(path: str, root: str) -> list[str]:
    """The components of ``path`` to walk from the workdir. An absolute path must name
    the workdir or a place inside it (after folding '.' and '..' as text)."""
    if not path or "\0" in path:
        raise PathError("refused: empty or invalid path")
    if not path.startswith("/"):
        return path.split("/")
    top = root.rstrip("/") + "/"
    if path == root or path.startswith(top):
        return path[len(top):].split("/")  # walked as given: '..' included
    normal = os.path.normpath(path)
    if normal == root or normal.startswith(top):
        return normal[len(top):].split("/")
    raise PathError(f"refused: path escapes the working directory: {path}")


def check_writable(place: Place, path: str) -> None:
    """``PathError`` unless a write may create or replace ``place``'s entry."""
    if place.readonly or place.name == GIT:
        raise PathError(readonly_message(path))
    if place.import_dir:
        raise PathError(f"refused: {path} would be in a folder Python imports "
                        "swarm from; nothing may be added or changed there")


def _more(parts: deque[str]) -> bool:
    """True if a component that moves the walk is still to come."""
    return any(part not in ("", ".") for part in parts)


def is_venv(dir_fd: int) -> bool:
    try:
        os.stat(VENV_MARK, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return True


def identity(st: os.stat_result) -> Identity:
    return (st.st_dev, st.st_ino)


def hidden_message(path: str) -> str:
    return (f"refused: {path} is swarm's own (its state or logs): out of the tools' "
            "reach")


def readonly_message(path: str) -> str:
    return (f"refused: {path} is read-only to the tools (swarm's own files, .git and "
            "virtual environments are)")


