"""Files beneath one folder, reached so that nothing outside it can be touched.

The model names paths, and text it read may tell it to attack. So a path is never handed
to the kernel whole: it is walked one component at a time from an open descriptor of the
workdir, each step an ``openat(O_PATH | O_NOFOLLOW)`` on the descriptor of the step
before. The kernel never follows a symlink for us: its target is read and walked the
same way (an absolute target only where it names a place inside the workdir), ``..`` goes
back along our own stack of descriptors, so a link out, a ``..`` above the top and a link
loop are refused, and a folder swapped for a symlink mid-walk (a race) is seen as the
symlink it has become. (Python 3.11 has no ``os.openat2``; walking ourselves also keeps an
absolute symlink that points inside working, which ``RESOLVE_BENEATH`` refuses.)

What a walk reaches is then checked:

- only regular files are opened, with ``O_NONBLOCK``, so a FIFO, socket or device is
  refused before it can block;
- a write goes to a new file beside its target and is renamed over it: never through a
  hard link into a file that lives elsewhere too;
- swarm's own things (a :class:`Fence`): ``hidden`` places (the state folder, the logs)
  cannot be read, written or listed; ``readonly`` places (swarm's code, the Python
  installation, the spec) and every ``.git`` and virtual environment can be read, not
  written; ``import_dirs`` (folders on ``sys.path``) take no new or changed entry, so no
  module can be planted where swarm imports from. Places are compared by identity
  (device, inode), so another spelling of a path reaches the same verdict.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

from workers.pathwalk import (
    GIT,
    MAX_DEPTH,
    VENV_MARK,
    Identity,
    PathError,
    Place,
    Walker,
    check_writable,
    hidden_message,
    identity,
    is_venv,
    readonly_message,
    relative_parts,
)

__all__ = ["MAX_DEPTH", "VENV_MARK", "Entry", "Fence", "Jail", "PathError", "Place", "Walk"]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True)
class Fence:
    """swarm's own places, as absolute paths (those that do not exist are ignored)."""

    hidden: tuple[str, ...] = ()
    readonly: tuple[str, ...] = ()
    import_dirs: tuple[str, ...] = ()


@dataclass
class Entry:
    """A file met by :meth:`Jail.walk`; ``dir_fd`` is open only while the walk is."""

    rel: str
    dir_fd: int
    name: str
    symlink: bool


@dataclass
class Walk:
    """The files below the workdir, in sorted order, and why the walk stopped early
    (``stopped``), if it did. Use it in a ``with`` block: leaving it closes the walk's
    open folders."""

    entries: Generator[Entry, None, None] | None = None
    stopped: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Entry]:
        assert self.entries is not None
        return self.entries

    def __enter__(self) -> Walk:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.entries is not None:
            self.entries.close()


class Jail:
    """The workdir, open, and the rules of what in it the tools may touch."""

    def __init__(self, root: str | os.PathLike[str], fence: Fence | None = None) -> None:
        fence = fence or Fence()
        self.root = os.path.realpath(root)
        self.fence = fence
        self.fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._hidden = _identities(fence.hidden)
        self._readonly = _identities(fence.readonly)
        self._imports = _identities(fence.import_dirs)
        top = identity(os.fstat(self.fd))
        self.top_readonly = top in self._readonly
        self.top_import = top in self._imports

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # --- reading and writing ---------------------------------------------------------

    def open_read(self, path: str) -> tuple[int, str]:
        """(descriptor, relative path) of the regular file ``path`` names, open to read."""
        with Walker(self, path) as walker:
            place = walker.walk(make_dirs=False)
            if not place.name:
                raise PathError("is a folder, not a file")
            return self._open_regular(place.dir_fd, place.name, path), place.rel

    def open_entry(self, entry: Entry) -> int:
        """A descriptor of a file met by :meth:`walk` (a symlink is walked as a path)."""
        if entry.symlink:
            return self.open_read(entry.rel)[0]
        return self._open_regular(entry.dir_fd, entry.name, entry.rel)

    def write(self, path: str, data: bytes, create: bool = True) -> str:
        """Replace (or create) the file ``path`` names with ``data``; its relative path.
        The data goes to a new file in the same folder, renamed over the old one."""
        with Walker(self, path) as walker:
            place = walker.walk(make_dirs=create)
            if not place.name:
                raise PathError("is a folder, not a file")
            check_writable(place, path)
            try:
                old: os.stat_result | None = os.stat(place.name, dir_fd=place.dir_fd,
                                                     follow_symlinks=False)
            except FileNotFoundError:
                old = None
            if old is None and not create:
                raise PathError("no such file")
            if old is not None:
                self._check_replaceable(old, path)
            _replace(place.dir_fd, place.name, data, old)
            return place.rel

    def _open_regular(self, dir_fd: int, name: str, path: str) -> int:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except FileNotFoundError:
            raise PathError("no such file") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # it became a symlink since we looked
                raise PathError(f"refused: {path} changed while it was opened") from None
            if exc.errno == errno.ENXIO:  # a socket
                raise PathError(f"refused: {path} is not a regular file") from None
            raise
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise PathError("is a folder, not a file")
            if not stat.S_ISREG(st.st_mode):
                raise PathError(f"refused: {path} is not a regular file "
                                "(a FIFO, socket or device)")
            if identity(st) in self._hidden:
                raise PathError(hidden_message(path))
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_replaceable(self, old: os.stat_result, path: str) -> None:
        if stat.S_ISDIR(old.st_mode):
            raise PathError("is a folder, not a file")
        if not stat.S_ISREG(old.st_mode):
            raise PathError(f"refused: {path} is not a regular file")
        if identity(old) in self._hidden:
            raise PathError(hidden_message(path))
        if identity(old) in self._readonly:
            raise PathError(readonly_message(path))

    # --- listing ---------------------------------------------------------------------

    def walk(self, max_entries: int) -> Walk:
        """Every file below the workdir (regular files and symlinks; folders are entered
        by descriptor, never through a symlink), sorted by path, skipping ``.git``,
        virtual environments and hidden places; at most ``max_entries`` entries seen
        and :data:`MAX_DEPTH` folders deep."""
        walk = Walk()
        walk.entries = self._entries(walk, max_entries)
        return walk

    def _entries(self, walk: Walk, max_entries: int) -> Generator[Entry, None, None]:
        top = os.open(".", _DIR, dir_fd=self.fd)
        stack: list[tuple[int, str, Iterator[tuple[str, str]]]] = []
        budget = [max_entries]
        try:
            stack.append((top, "", self._children(top, budget, walk)))
            while stack:
                fd, folder, children = stack[-1]
                child = next(children, None)
                if child is None:
                    os.close(fd)
                    stack.pop()
                    continue
                name, kind = child
                rel = folder + name
                if kind != "dir":
                    yield Entry(rel, fd, name, kind == "link")
                    continue
                if len(stack) > MAX_DEPTH:
                    _note(walk, f"folders deeper than {MAX_DEPTH} levels were not entered")
                    continue
                sub = self._enter_listed(fd, name)
                if sub is not None:
                    stack.append((sub, rel + "/", self._children(sub, budget, walk)))
        finally:
            for fd, _, _ in stack:
                os.close(fd)

    def _children(self, fd: int, budget: list[int], walk: Walk) -> Iterator[tuple[str, str]]:
        """(name, kind) of a folder's entries, sorted so that the walk's paths come out
        in sorted order (a folder sorts as its name plus '/')."""
        found: list[tuple[str, str, str]] = []
        with os.scandir(fd) as listing:
            for item in listing:
                if budget[0] <= 0:
                    _note(walk, "stopped after the listing limit of entries")
                    break
                budget[0] -= 1
                if item.is_symlink():
                    found.append((item.name, item.name, "link"))
                elif item.is_dir(follow_symlinks=False):
                    if item.name != GIT:
                        found.append((item.name + "/", item.name, "dir"))
                elif item.is_file(follow_symlinks=False):
                    found.append((item.name, item.name, "file"))
        found.sort()
        return ((name, kind) for _, name, kind in found)

    def _enter_listed(self, fd: int, name: str) -> int | None:
        try:
            sub = os.open(name, _DIR, dir_fd=fd)
        except OSError:
            return None  # gone, swapped for a symlink, or not ours to read
        if identity(os.fstat(sub)) in self._hidden or is_venv(sub):
            os.close(sub)
            return None
        return sub

    # --- the walk ----------------------------------------------------------------------

    def relative_parts(self, path: str) -> list[str]:
        return relative_parts(path, self.root)

    def hidden(self, identity: Identity) -> bool:
        return identity in self._hidden

    def readonly(self, identity: Identity) -> bool:
        return identity in self._readonly

    def imports(self, identity: Identity) -> bool:
        return identity in self._imports


def _identities(paths: tuple[str, ...]) -> frozenset[Identity]:
    found = set()
    for path in paths:
        try:
            found.add(identity(os.stat(path)))
        except OSError:
            continue
    return frozenset(found)


def _note(walk: Walk, text: str) -> None:
    if text not in walk.stopped:
        walk.stopped.append(text)


def _replace(dir_fd: int, name: str, data: bytes, old: os.stat_result | None) -> None:
    """Write ``data`` to a new file beside ``name`` and rename it over ``name``."""
    mode = 0o666 if old is None else stat.S_IMODE(old.st_mode)
    tmp = f".{name[:200]}.{secrets.token_hex(4)}.swarm-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if old is not None:
                os.fchmod(fd, mode)  # the umask took bits off at creation
                _keep_owner(fd, old)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def _keep_owner(fd: int, old: os.stat_result) -> None:
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (old.st_uid, old.st_gid):
        try:
            os.fchown(fd, old.st_uid, old.st_gid)
        except OSError:
            pass  # not ours to give away: the file is now the worker's user's
