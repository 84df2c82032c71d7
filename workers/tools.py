"""The agent's tools, and what keeps them inside the pool's workdir.

The file tools reach files only through :class:`workers.jail.Jail`: every path is walked
from the workdir one descriptor at a time, so no symlink, ``..``, race or hard link leads
outside, only regular files are opened, and swarm's own files are hidden or read-only.
Reads, writes and edits have size limits and stream, so memory stays bounded whatever a
file looks like. Regular expressions (``grep``, globs) run on the ``regex`` package with a
time limit and without holding the GIL, walks are iterative and bounded, and the file
tools run on a thread pool of their own with a time limit: nothing a tool is asked to do
stops the worker's event loop (its heartbeat and its other tasks), and any failure is a
``ToolError`` the model reads.

The ``shell`` tool (off by default) runs ``/bin/sh -c`` in a sandbox of Linux namespaces
(:mod:`workers.sandbox`): the workdir writable, swarm's own places in it hidden or
read-only, the system read-only, no network unless allowed, no view of other processes,
an environment from an allow-list, and everything it started killed when it ends. A pool
may opt out (``shell_sandbox: false``); the command then runs as the worker's user.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import regex

from workers.jail import Entry, Fence, Jail, PathError, Walk
from workers.lookup_tools import DEFINITIONS as SWARM_DEFINITIONS
from workers.lookup_tools import SwarmTools
from workers.search import LineSearch, glob_regex
from workers.shell import run_shell
from workers.tool_base import ToolError, ToolSettings, arg, clip, positive, seconds

log = logging.getLogger("swarm.tools")

GREP_MAX_LINE_CHARS = 400
MAX_LIST_ENTRIES = 200_000  # entries a listing or a grep looks at, at most
_CHUNK = 65536
_BINARY_PROBE = 8192
_executor: ThreadPoolExecutor | None = None

__all__ = ["HandBack", "ToolError", "ToolSettings", "Toolbox", "glob_regex"]


class HandBack(Exception):
    """The model handed its task back (it needs deeper reasoning): the task ends here,
    with the model's reason, and no pretence of an answer."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- tool definitions (Messages API) ---------------------------------------------------

def _schema(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required}


_STR = {"type": "string"}
_PATH = {"type": "string", "description": "path relative to the working directory"}

_DEFINITIONS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # name: (setting, description, input_schema)
    "read_file": ("read", "Read a text file. Optionally from line `offset` (1-based), "
                  "at most `limit` lines. Long files are truncated.",
                  _schema({"path": _PATH,
                           "offset": {"type": "integer", "minimum": 1},
                           "limit": {"type": "integer", "minimum": 1}}, ["path"])),
    "write_file": ("write", "Create or overwrite a file with `content` "
                   "(parent folders are created).",
                   _schema({"path": _PATH, "content": _STR}, ["path", "content"])),
    "edit_file": ("edit", "Replace the exact text `old_string` with `new_string` in a file. "
                  "`old_string` must occur exactly once unless `replace_all` is true.",
                  _schema({"path": _PATH, "old_string": _STR, "new_string": _STR,
                           "replace_all": {"type": "boolean", "default": False}},
                          ["path", "old_string", "new_string"])),
    "list_files": ("list", "List files (sorted relative paths) matching a glob such as "
                   "`**/*.py` (default `**/*`).",
                   _schema({"pattern": {"type": "string", "default": "**/*"}}, [])),
    "grep": ("grep", "Search files for a Python regular expression; prints "
             "`path:line: text` for each matching line.",
             _schema({"pattern": _STR, "glob": {"type": "string", "default": "**/*"},
                      "ignore_case": {"type": "boolean", "default": False}}, ["pattern"])),
    "hand_back": ("hand_back", "Hand the task back instead of answering it, when it "
                  "needs deeper reasoning than you can give or cannot be done with your "
                  "tools: say why in `reason`. The task ends at once; a stronger model "
                  "may take it up.",
                  _schema({"reason": _STR}, ["reason"])),
    "shell": ("shell", "Run a shell command (/bin/sh -c) in the working directory; "
              "returns its exit code and combined output.",
              _schema({"command": _STR,
                       "timeout": {"type": "number", "description": "seconds"}},
                      ["command"])),
}


class Toolbox:
    """The tools of one task, acting inside a workdir (a :class:`Jail`, shared by the
    worker's tasks, or a path)."""

    def __init__(self, workdir: Jail | str | Path, settings: ToolSettings,
                 fence: Fence | None = None) -> None:
        self.jail = workdir if isinstance(workdir, Jail) else Jail(workdir, fence or Fence())
        self.fence = self.jail.fence
        self.root = self.jail.root
        self.settings = settings
        self.files_changed: set[str] = set()
        self.swarm: SwarmTools | None = None  # findings lookup, the librarian (if given)

    # --- public ------------------------------------------------------------------------

    def definitions(self) -> list[dict[str, Any]]:
        """Messages API tool definitions of the enabled tools."""
        return [{"name": name, "description": desc, "input_schema": schema}
                for name, (setting, desc, schema) in _DEFINITIONS.items()
                if getattr(self.settings, setting)] + [
            {"name": name, "description": desc, "input_schema": schema}
            for name, (setting, desc, schema) in SWARM_DEFINITIONS.items()
            if self.swarm is not None and self.swarm.offers(name)
            and getattr(self.settings, setting)]

    @property
    def findings_read(self) -> set[str]:
        """The findings this task read whole (it cites them)."""
        return self.swarm.lookup.read if self.swarm is not None else set()

    async def run(self, name: str, tool_input: dict[str, Any]) -> str:
        """Run one tool; the text for the model, or ``ToolError``. Nothing a tool meets
        escapes as another exception."""
        if name == "shell" and not self.settings.shell:
            raise ToolError("refused: the shell tool is off for this pool")
        if name in SWARM_DEFINITIONS:
            if self.swarm is None or not self.swarm.offers(name) or \
                    not getattr(self.settings, SWARM_DEFINITIONS[name][0]):
                raise ToolError(f"refused: the {name} tool is off for this pool")
            if not isinstance(tool_input, dict):
                raise ToolError("tool input must be an object")
            try:
                return await self.swarm.run(name, tool_input)
            except ToolError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: the model hears it
                raise ToolError(f"{name} failed: {type(exc).__name__}: {exc}") from None
        if name not in _DEFINITIONS:
            raise ToolError(f"unknown tool: {name}")
        if not getattr(self.settings, _DEFINITIONS[name][0]):
            raise ToolError(f"refused: the {name} tool is off for this pool")
        if not isinstance(tool_input, dict):
            raise ToolError("tool input must be an object")
        if name == "hand_back":
            reason = arg(tool_input, "reason", str).strip()
            raise HandBack(reason[:2000] or "(no reason given)")
        try:
            if name == "shell":
                return await self._shell(tool_input)
            return await self._in_thread(name, tool_input)
        except ToolError:
            raise
        except PathError as exc:
            raise ToolError(str(exc)) from None
        except OSError as exc:
            raise ToolError(f"{name} failed: {exc.strerror or exc}") from None
        except ValueError as exc:  # e.g. a NUL byte or a lone surrogate in the input
            raise ToolError(f"{name} failed: {exc}") from None
        except Exception as exc:
            log.exception("tool %s failed", name)
            raise ToolError(f"{name} failed: {type(exc).__name__}: {exc}") from None

    async def _in_thread(self, name: str, tool_input: dict[str, Any]) -> str:
        """A file tool on the tools' own threads, within ``tool_timeout``: the tool is
        given the deadline and stops itself; if it cannot, the model hears so anyway."""
        timeout = self.settings.tool_timeout
        deadline = time.monotonic() + timeout
        sync: Callable[[dict[str, Any], float], str] = getattr(self, "_" + name)
        future = asyncio.get_running_loop().run_in_executor(
            _tool_threads(), sync, tool_input, deadline)
        try:
            return await asyncio.wait_for(future, timeout + 1.0)
        except TimeoutError:
            raise ToolError(f"{name} took longer than {timeout:g}s and was abandoned") from None

    # --- file tools (on the tools' threads) ----------------------------------------------

    def _read_file(self, args: dict[str, Any], deadline: float) -> str:
        path = arg(args, "path", str)
        offset, limit = positive(args, "offset") or 1, positive(args, "limit")
        fd, _ = self.jail.open_read(path)
        with io.BufferedReader(io.FileIO(fd, "rb"), _CHUNK) as f:
            if b"\0" in f.peek(_BINARY_PROBE)[:_BINARY_PROBE]:
                raise ToolError(f"{path} looks binary; not shown")
            text, lines = _read_lines(f, offset, limit, self.settings.max_read_bytes, deadline)
        if text is None:
            raise ToolError(f"offset {offset} is past the end ({lines} lines)")
        return text or "(empty file)"

    def _write_file(self, args: dict[str, Any], deadline: float) -> str:
        path, content = arg(args, "path", str), arg(args, "content", str)
        data = content.encode("utf-8")
        self._check_size(len(data), "content")
        rel = self.jail.write(path, data)
        self.files_changed.add(rel)
        return f"wrote {len(data)} bytes to {rel}"

    def _edit_file(self, args: dict[str, Any], deadline: float) -> str:
        path = arg(args, "path", str)
        old, new = arg(args, "old_string", str), arg(args, "new_string", str)
        replace_all = arg(args, "replace_all", bool, False)
        if old == new:
            raise ToolError("old_string and new_string are the same")
        if not old:
            raise ToolError("old_string is empty")
        fd, _ = self.jail.open_read(path)
        with os.fdopen(fd, "rb") as f:
            self._check_size(os.fstat(fd).st_size, path)
            data = f.read(self.settings.max_file_bytes + 1)
        self._check_size(len(data), path)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ToolError(f"{path} is not UTF-8 text") from None
        count = text.count(old)
        if count == 0:
            raise ToolError(f"old_string not found in {path}")
        if count > 1 and not replace_all:
            raise ToolError(f"old_string occurs {count} times in {path}; give more context "
                            "to make it unique, or set replace_all")
        grows = len(new.encode("utf-8")) - len(old.encode("utf-8"))
        self._check_size(len(data) + (count if replace_all else 1) * grows, "the result")
        rel = self.jail.write(path, text.replace(old, new, -1 if replace_all else 1)
                              .encode("utf-8"), create=False)
        self.files_changed.add(rel)
        return f"replaced {count if replace_all else 1} occurrence(s) in {rel}"

    def _list_files(self, args: dict[str, Any], deadline: float) -> str:
        pattern = arg(args, "pattern", str, "**/*")
        paths: list[str] = []
        with self.jail.walk(MAX_LIST_ENTRIES) as walk:
            for entry in self._matching(walk, pattern, deadline):
                paths.append(entry.rel)
        note = _stopped(walk.stopped)
        if not paths:
            return f"(no files match {pattern})" + note
        return clip("\n".join(paths), self.settings.max_output_chars) + note

    def _grep(self, args: dict[str, Any], deadline: float) -> str:
        flags = regex.IGNORECASE if arg(args, "ignore_case", bool, False) else 0
        text = arg(args, "pattern", str)
        try:
            search = LineSearch(regex.compile(text, flags), text, flags)
        except regex.error as exc:
            raise ToolError(f"bad regular expression: {exc}") from None
        out: list[str] = []
        size, cap = 0, self.settings.max_output_chars
        with self.jail.walk(MAX_LIST_ENTRIES) as walk:
            for entry in self._matching(walk, arg(args, "glob", str, "**/*"), deadline):
                for hit in self._grep_file(search, entry, deadline):
                    out.append(hit)
                    size += len(hit) + 1
                    if size > cap:
                        return clip("\n".join(out), cap, "chars; narrow the search")
        return ("\n".join(out) or "(no matches)") + _stopped(walk.stopped)

    def _matching(self, walk: Walk, pattern: str, deadline: float) -> Iterator[Entry]:
        """The walk's files whose path matches the glob ``pattern`` (symlinks only when
        they lead to a regular file inside)."""
        if pattern.startswith("/") or ".." in pattern.replace("\\", "/").split("/"):
            raise ToolError(f"refused: glob pattern escapes the working directory: {pattern}")
        try:
            match = glob_regex(pattern or "**/*").match
        except regex.error as exc:
            raise ToolError(f"bad glob pattern {pattern!r}: {exc}") from None
        for entry in walk:
            if not match(entry.rel, timeout=_left(deadline, "the glob"), concurrent=True):
                continue
            if entry.symlink and not self._leads_to_file(entry):
                continue
            yield entry

    def _leads_to_file(self, entry: Entry) -> bool:
        try:
            os.close(self.jail.open_entry(entry))
        except (PathError, OSError):
            return False
        return True

    def _grep_file(self, search: LineSearch, entry: Entry,
                   deadline: float) -> Iterator[str]:
        try:
            fd = self.jail.open_entry(entry)
        except (PathError, OSError):
            return
        with os.fdopen(fd, "rb") as f:
            if os.fstat(fd).st_size > self.settings.max_file_bytes:
                return
            data = f.read(self.settings.max_file_bytes + 1)
        if len(data) > self.settings.max_file_bytes or b"\0" in data[:_BINARY_PROBE]:
            return
        text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        try:
            for lineno, line in search.lines(text, deadline):
                yield f"{entry.rel}:{lineno}: {line[:GREP_MAX_LINE_CHARS]}"
        except TimeoutError:
            raise ToolError(f"grep stopped: the regular expression took too long in "
                            f"{entry.rel} (it may backtrack without end; simplify it)") from None

    def _check_size(self, size: int, what: str) -> None:
        limit = self.settings.max_file_bytes
        if size > limit:
            raise ToolError(f"refused: {what} would be {size} bytes; files here are "
                            f"limited to {limit} bytes")

    async def _shell(self, args: dict[str, Any]) -> str:
        limit = self.settings.shell_timeout
        return await run_shell(arg(args, "command", str),
                               min(seconds(args, "timeout", limit), limit),
                               self.settings, self.root, self.fence)


# --- helpers -----------------------------------------------------------------------------

def _tool_threads() -> ThreadPoolExecutor:
    """The file tools' own threads (made on first use, in the worker), so that slow
    tools never starve the loop's default executor."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tool")
    return _executor


def _left(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ToolError(f"{what} ran out of time; narrow it down")
    return left


def _read_lines(f: io.BufferedReader[io.FileIO], offset: int, limit: int | None, cap: int,
                deadline: float) -> tuple[str | None, int]:
    """Lines ``offset``.. (at most ``limit``) of a file, at most ``cap`` bytes, read in
    pieces so that memory stays bounded whatever the lines' length. (None, line count)
    if ``offset`` is past the end."""
    taken = bytearray()
    lineno, wanted = 1, 0  # the line being read; lines taken so far
    line_started = False
    while True:
        piece = f.readline(_CHUNK)
        if not piece:
            break
        if time.monotonic() > deadline:
            raise ToolError("read_file ran out of time")
        line_started = True
        if lineno >= offset:
            if limit is not None and wanted >= limit:
                break
            if len(taken) + len(piece) > cap:
                taken += piece[: cap - len(taken)]
                return (_decode(taken) + f"\n[... truncated at {cap} bytes; read on with "
                        f"offset={lineno + 1}]"), lineno
            taken += piece
        if piece.endswith(b"\n"):
            if lineno >= offset:
                wanted += 1
            lineno += 1
            line_started = False
    total = lineno if line_started else lineno - 1
    if offset > max(total, 1):
        return None, total
    return _decode(taken), total


def _decode(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def _stopped(reasons: list[str]) -> str:
    return "".join(f"\n[... {reason}]" for reason in reasons)


