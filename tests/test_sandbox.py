"""The shell sandbox (workers/sandbox.py): each test runs a real command in a real
sandbox and checks something it could do without one (read the worker's environment,
a file outside the workdir, the network, leave a process behind...) is gone, and that
what it needs (its workdir, the system, python3, loopback) still works.

When the tests run as root, uid 0 is mapped into the sandbox: they then also show that
root gains nothing there. ``test_unprivileged`` repeats the key checks as uid 65534. The tests
skip if this machine cannot create the namespaces (user namespaces turned off); any
other failure to build a sandbox fails them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.harness.procs import ROOT, wait_for
from workers import sandbox
from workers.sandbox import SandboxSpec

ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "SANDBOX_TEST": "yes"}
PYTHON = (sys.base_prefix, sys.prefix)  # the interpreter running the tests, and its venv
NOBODY = 65534
# a command that could harm the host if the sandbox were broken starts with this: in a
# sandbox the shell is pid 1
GUARD = "[ $$ -eq 1 ] || { echo not in a sandbox; exit 99; };"
# steps that fail where the kernel or the container forbids namespaces: a skip, not a bug
UNAVAILABLE = ("unshare:", "write the uid and gid maps:", "mount /proc:")


@pytest.fixture(autouse=True)
def sandbox_available() -> None:
    reason = sandbox.probe()
    if reason and any(step in reason for step in UNAVAILABLE):
        pytest.skip(reason)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """tmp/work (the workdir) beside tmp/outside/secret.txt."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("SECRET outside\n")
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


def run(spec: SandboxSpec, script: str) -> subprocess.CompletedProcess[str]:
    """``sh -c script`` in the sandbox, as the worker runs it."""
    return run_argv(spec, ["/bin/sh", "-c", script])


def run_argv(spec: SandboxSpec, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``argv`` in the sandbox; killed (and so all it started) after 30 s."""
    return subprocess.run(sandbox.command(spec, argv), text=True, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=30)


def processes(command: str) -> list[psutil.Process]:
    """The host's processes running exactly ``command`` (split at spaces)."""
    return [proc for proc in psutil.process_iter(["cmdline"])
            if proc.info["cmdline"] == command.split()]


@pytest.fixture
def sleeper() -> Iterator[str]:
    """``sleep <unique duration>``; whatever of it is left is killed after the test."""
    marker = f"sleep 600.{os.getpid()}"
    yield marker
    for proc in processes(marker):
        proc.kill()


@pytest.fixture
def server() -> Iterator[int]:
    """A TCP server listening on 127.0.0.1 outside the sandbox: its port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


# --- what the command sees of the worker ------------------------------------------------

def test_only_its_own_processes(work: Path) -> None:
    done = run(SandboxSpec(str(work), env=ENV),
               f"echo pid=$$; ls /proc | grep '^[0-9]'; cat /proc/$PPID/environ "
               f"|| echo no-parent; cat /proc/{os.getpid()}/environ || echo no-test")
    assert "pid=1\n" in done.stdout, done
    assert "no-parent" in done.stdout and "no-test" in done.stdout, done
    pids = [int(line) for line in done.stdout.splitlines() if line.isdigit()]
    assert pids and max(pids) < 10, done.stdout


def test_environment_is_exactly_the_spec(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-secret")
    done = run(SandboxSpec(str(work), env=ENV), "env; tr '\\0' '\\n' < /proc/1/environ")
    assert "sk-test-secret" not in done.stdout
    names = {line.split("=", 1)[0] for line in done.stdout.splitlines()}
    assert names - {"PWD"} == set(ENV), done.stdout  # sh adds PWD
    assert "SANDBOX_TEST=yes" in done.stdout


def test_no_capabilities_no_ignored_signals(work: Path) -> None:
    done = run(SandboxSpec(str(work), env=ENV),
               "grep -E '^(Cap(Prm|Eff|Bnd|Amb)|SigIgn):' /proc/self/status; hostname")
    values = dict(line.split(":\t") for line in done.stdout.splitlines()[:-1])
    assert set(values) == {"CapPrm", "CapEff", "CapBnd", "CapAmb", "SigIgn"}, done
    assert set(values.values()) == {"0000000000000000"}, done.stdout
    assert done.stdout.splitlines()[-1] == "sandbox"


# --- files ----------------------------------------------------------------------------

def test_nothing_outside_the_workdir(work: Path) -> None:
    outside = work.parent / "outside"
    (work / "link").symlink_to(outside / "secret.txt")
    done = run(SandboxSpec(str(work), env=ENV),
               f"cat {outside}/secret.txt || echo no-read; cat link || echo no-link; "
               f"echo x > {outside}/new.txt || echo no-write; "
               "for d in /root /home /var /run /srv /mnt /sys /media; do "
               "  test -e $d && echo present $d; done; ls / | tr '\\n' ' '")
    assert "SECRET" not in done.stdout, done
    assert "no-read" in done.stdout and "no-link" in done.stdout and "no-write" in done.stdout
    assert "present" not in done.stdout, done.stdout
    assert not (outside / "new.txt").exists()


def test_system_is_read_only_even_for_root(work: Path) -> None:
    name = f"sandbox-test-{os.getpid()}"  # what a broken sandbox would create: removed below
    (work / "mnt").mkdir()
    script = (f"{GUARD} touch /usr/{name} || echo no-usr; touch /etc/{name} || echo no-etc; "
              "mount -o remount,rw /usr || echo no-remount; "
              f"touch /usr/{name} || echo still-no; mount -t tmpfs none mnt || echo no-mount; "
              "unshare -rm true || echo no-userns")
    try:
        done = run(SandboxSpec(str(work), env=ENV), script)
        for said in ("no-usr", "no-etc", "no-remount", "still-no", "no-mount", "no-userns"):
            assert said in done.stdout, done
        assert not Path(f"/usr/{name}").exists() and not Path(f"/etc/{name}").exists()
    finally:
        Path(f"/usr/{name}").unlink(missing_ok=True)
        Path(f"/etc/{name}").unlink(missing_ok=True)
        if os.path.ismount(work / "mnt"):
            subprocess.run(["umount", "-l", str(work / "mnt")], timeout=30)


def test_workdir_is_writable(work: Path) -> None:
    done = run(SandboxSpec(str(work), env=ENV), "pwd; mkdir sub && echo written > sub/new.txt")
    assert done.returncode == 0, done
    assert done.stdout.strip() == str(work)
    new = work / "sub" / "new.txt"
    assert new.read_text() == "written\n"
    assert (new.stat().st_uid, new.stat().st_gid) == (os.geteuid(), os.getegid())


def test_hidden_and_readonly_paths_in_the_workdir(work: Path) -> None:
    (work / "secret.txt").write_text("SECRET inside\n")
    (work / "state").mkdir()
    (work / "state" / "password").write_text("SECRET state\n")
    (work / ".git").mkdir()
    (work / ".git" / "config").write_text("[core]\n")
    spec = SandboxSpec(str(work), env=ENV, hidden=(str(work / "secret.txt"), str(work / "state")),
                       readonly=(str(work / ".git"),))
    done = run(spec, "cat secret.txt; ls -A state; cat state/password; cat .git/config; "
                     "echo x > secret.txt || echo no-secret; touch state/new || echo no-state; "
                     "echo x >> .git/config || echo no-config; touch .git/new || echo no-git; "
                     "umount secret.txt || echo no-umount")
    assert "SECRET" not in done.stdout, done
    assert "[core]" in done.stdout
    for said in ("no-secret", "no-state", "no-config", "no-git", "no-umount"):
        assert said in done.stdout, done
    assert (work / "secret.txt").read_text() == "SECRET inside\n"
    assert sorted(os.listdir(work / "state")) == ["password"]
    assert sorted(os.listdir(work / ".git")) == ["config"]
    assert (work / ".git" / "config").read_text() == "[core]\n"


def test_python_runs_inside(work: Path) -> None:
    spec = SandboxSpec(str(work), env=ENV, readonly=PYTHON)
    done = run_argv(spec, [sys.executable, "-c", "import sys, json; print(sys.version)"])
    assert done.returncode == 0, done
    assert done.stdout.strip() == sys.version


# --- network --------------------------------------------------------------------------

CONNECT = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 5)"
LOOPBACK = ("import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1); "
            "socket.create_connection(s.getsockname(), 5); print('loopback ok')")


def test_no_network(work: Path, server: int) -> None:
    spec = SandboxSpec(str(work), env=ENV, readonly=PYTHON)
    done = run(spec, f"{sys.executable} -c \"{CONNECT}\" {server} 2>/dev/null || echo refused; "
                     f"{sys.executable} -c \"{LOOPBACK}\"; cat /proc/net/dev")
    assert "refused" in done.stdout, done
    assert "loopback ok" in done.stdout, done
    interfaces = [line.split(":")[0].strip() for line in done.stdout.splitlines() if ":" in line]
    assert interfaces == ["lo"], done.stdout


def test_network_when_asked(work: Path, server: int) -> None:
    spec = SandboxSpec(str(work), env=ENV, readonly=PYTHON, network=True)
    done = run(spec, f"{sys.executable} -c \"{CONNECT}\" {server} && echo connected")
    assert "connected" in done.stdout, done


# --- processes ------------------------------------------------------------------------

def test_nothing_survives_the_command(work: Path, sleeper: str) -> None:
    done = run(SandboxSpec(str(work), env=ENV),
               f"setsid {sleeper} & (setsid sh -c '{sleeper} &' &); echo started")
    assert done.returncode == 0 and "started" in done.stdout, done
    wait_for(lambda: not processes(sleeper), 10, f"no `{sleeper}` left")


def test_killing_the_sandbox_kills_everything_inside(work: Path, sleeper: str) -> None:
    proc = subprocess.Popen(sandbox.command(SandboxSpec(str(work), env=ENV),
                                            ["/bin/sh", "-c", f"setsid {sleeper} & {sleeper}"]),
                            stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(processes(sleeper)) == 2, 20, "both sleeps to start")
        os.kill(proc.pid, signal.SIGKILL)  # as the worker does when a command times out
        assert proc.wait(timeout=10) == -signal.SIGKILL
        wait_for(lambda: not processes(sleeper), 10, f"no `{sleeper}` left")
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_exit_codes(work: Path) -> None:
    spec = SandboxSpec(str(work), env=ENV)
    assert run(spec, "exit 3").returncode == 3
    assert run(spec, "sh -c 'kill -KILL $$'; exit $?").returncode == 128 + signal.SIGKILL
    missing = run_argv(spec, ["no-such-command"])
    assert missing.returncode == 127
    assert missing.stderr == "sandbox: exec no-such-command: No such file or directory\n"


def test_setup_failure(tmp_path: Path) -> None:
    done = run(SandboxSpec(str(tmp_path / "missing"), env=ENV), "echo ran")
    assert done.returncode == sandbox.SETUP_FAILED
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("sandbox: bind "), done


# --- as an unprivileged user ----------------------------------------------------------

@pytest.fixture
def nobody_python() -> str:
    """A Python uid 65534 can run (the test's own may live in root's home)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become uid 65534 (these tests already run unprivileged)")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    for python in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if python and as_nobody([python, "-I", "-S", "-c", "pass"]).returncode == 0:
            return python
    pytest.skip("no Python that uid 65534 may run")


def as_nobody(argv: list[str]) -> subprocess.CompletedProcess[str]:
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run(setpriv + argv, text=True, capture_output=True, timeout=30,
                          stdin=subprocess.DEVNULL)


def test_unprivileged(nobody_python: str, sleeper: str) -> None:
    work = tempfile.mkdtemp(prefix="sandbox-nobody-")  # /tmp: tmp_path is root's only
    os.chmod(work, 0o777)
    name = f"sandbox-test-{os.getpid()}"
    try:
        argv = sandbox.command(SandboxSpec(work, env=ENV), ["/bin/sh", "-c", (
            f"id -u; echo pid=$$; ls /proc | grep -c '^[0-9]'; cat /proc/{os.getpid()}/environ "
            f"|| echo no-test; {GUARD} touch /usr/{name} || echo no-usr; echo written > new.txt; "
            f"setsid {sleeper} & echo done")])
        done = as_nobody([nobody_python, *argv[1:]])
        if any(step in done.stderr for step in UNAVAILABLE):
            pytest.skip(f"unprivileged user namespaces are off: {done.stderr.strip()}")
        assert done.returncode == 0, done
        lines = done.stdout.splitlines()
        assert lines[:2] == [str(NOBODY), "pid=1"], done.stdout
        assert int(lines[2]) < 10
        assert "no-test" in lines and "no-usr" in lines and "done" in lines, done.stdout
        new = Path(work) / "new.txt"
        assert new.read_text() == "written\n" and new.stat().st_uid == NOBODY
        wait_for(lambda: not processes(sleeper), 10, f"no `{sleeper}` left")
        assert not Path(f"/usr/{name}").exists()
    finally:
        shutil.rmtree(work)
        Path(f"/usr/{name}").unlink(missing_ok=True)


# --- probe ----------------------------------------------------------------------------

def test_probe_succeeds_here() -> None:
    assert sandbox.probe() is None


def test_probe_says_why_it_cannot(work: Path) -> None:
    """Inside a sandbox no user namespace can be created: a real failure to probe."""
    spec = SandboxSpec(str(work), env={**ENV, "PYTHONPATH": str(ROOT)},
                       readonly=(*PYTHON, str(ROOT / "workers")))
    done = run_argv(spec, [sys.executable, "-c",
                           "from workers import sandbox; print(sandbox.probe())"])
    assert done.returncode == 0, done
    reason = done.stdout.strip()
    assert "\n" not in reason
    assert reason.startswith("cannot build a sandbox (exit code 125): unshare: "
                             "No space left on device (unprivileged user namespaces"), reason
