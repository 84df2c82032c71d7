"""Build a sandbox from Linux namespaces and run one command in it.

Run as ``python -I -S _sandbox_init.py JSON`` (see ``workers/sandbox.py``, which writes
the JSON): standard library only, nothing imported from the project or the current
folder. The command is untrusted (a model's shell command), so it gets:

- its own **user namespace** in which the ids equal the outside ones (``uid_map`` maps
  the caller's uid to itself, ``gid_map`` its gid), so ``id`` and file owners look the
  same in and out. Its capabilities are gone after ``execve``: the bounding set is
  emptied and ``PR_SET_NO_NEW_PRIVS`` is set, so even a caller running as root yields a
  command that cannot mount, remount or write what is read-only. It cannot create a
  nested user namespace either (``user.max_user_namespaces`` is 0 inside): no mounts of
  its own, and less of the kernel to attack;
- its own **mount namespace** whose root is a fresh read-only tmpfs holding only: the
  system folders (/usr /bin /sbin /lib* /etc /opt) and the spec's ``readonly`` paths,
  bound read-only; the workdir, bound read-write at its own path, with its ``readonly``
  paths bound read-only and its ``hidden`` paths masked (an empty read-only tmpfs over a
  folder, an empty read-only file over a file); a fresh read-only /proc; a small /dev
  (null zero full random urandom tty, the fd symlinks, a /dev/shm tmpfs); a fresh /tmp.
  No /home, /root, /var, /run, /sys, /srv, /mnt... Mounts are made parents first, so a
  deeper path wins; nothing is mounted beneath a hidden path. Paths that do not exist
  are skipped. The mounts come from a more privileged namespace, so the kernel locks
  them: the command cannot uncover a mask or remount a read-only bind;
- its own **pid namespace**, in which the command is pid 1: it sees only its own
  processes (no ``/proc/<worker>/environ``), and when it exits the kernel kills
  everything it left behind (``setsid sleep 600 &`` included);
- its own **network namespace** (unless ``network``) with only loopback, brought up;
- its own IPC, UTS (hostname "sandbox") and cgroup namespaces, a new session (no
  controlling terminal to push keystrokes into with TIOCSTI), exactly the spec's
  environment, and only stdin, stdout and stderr of the caller's descriptors.

Not isolated: there is no seccomp filter (every system call reaches the kernel) and no
cgroup or rlimit (CPU, memory, processes, disk use of the workdir, /tmp's 256 MB count
against the caller's own limits). With ``network`` the command shares the caller's
network, the host's loopback services included. The uid inside is the caller's, so
what it may read in the system folders (e.g. /etc/shadow when the caller is root) is
what the caller may read.

How: this process sets PR_SET_PDEATHSIG (and exits if its caller is already gone),
unshares the namespaces, writes the id maps and forks; the child is pid 1 of the new pid
namespace. It too dies with its parent, assembles the new root on a tmpfs mounted over
/sys (the one host folder that is never shown nor read from, so no bind source is
covered), ``pivot_root``\\ s into it, drops what it may do and execs the command. This
process (outside) waits for it and exits with its exit code, or 128+signal; it forwards
no signal: when it is killed, the kernel kills the child (PDEATHSIG) and so the whole
namespace. A set-up failure prints one line ``sandbox: <step>: <reason>`` on stderr and
exits 125; a command that cannot be executed gives 127 (not found) or 126.
"""

import ctypes
import errno
import itertools
import json
import os
import signal
import sys

SETUP_FAILED = 125
NOT_FOUND = 127
NOT_EXECUTABLE = 126

STAGE = "/sys"  # the new root is assembled on a tmpfs mounted here
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
             "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}
HOSTNAME = b"sandbox"
TMP_OPTIONS = "mode=1777,size=256m"
SHM_OPTIONS = "mode=1777,size=64m"

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
# <linux/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MNT_DETACH = 2
# the per-mount options of /proc/self/mountinfo that a read-only remount must repeat
# (inside a user namespace the kernel refuses to change them: they are locked)
LOCKED_OPTIONS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
                  "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME,
                  "relatime": MS_RELATIME}
# <linux/sockios.h>, <linux/if.h>
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ_SIZE = 40
IFR_FLAGS = 16  # offset of ifr_flags in struct ifreq, after the 16-byte name
AF_INET = 2
SOCK_DGRAM = 2
# pivot_root has no glibc wrapper: its system call number per architecture
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "loongarch64": 41,
              "i386": 217, "i686": 217, "s390x": 217, "armv7l": 218, "armv8l": 218,
              "ppc64le": 203, "ppc64": 203}

USERNS_HINT = ("unprivileged user namespaces disabled? see the sysctls "
               "kernel.unprivileged_userns_clone, user.max_user_namespaces and "
               "kernel.apparmor_restrict_unprivileged_userns")
PROC_HINT = "the kernel refuses a new /proc where the host's is partly masked, as in a container"

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                       ctypes.c_ulong, ctypes.c_char_p)
libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                       ctypes.c_ulong, ctypes.c_ulong)


class SetupError(Exception):
    """A step of the set-up failed; ``str()`` is ``<step>: <reason>``."""


class Step:
    """``with Step("mount /proc"):`` turns an ``OSError`` into a :class:`SetupError`
    naming the step (the innermost step names it), with an optional hint."""

    def __init__(self, name: str, hint: str = "") -> None:
        self.name, self.hint = name, hint

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
            hint = f" ({self.hint})" if self.hint else ""
            raise SetupError(f"{self.name}: {reason}{hint}") from None


def check(result: int) -> int:
    """The result of a libc call, or ``OSError`` from errno if it failed."""
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def prctl(option: int, arg: int = 0) -> None:
    check(libc.prctl(option, arg, 0, 0, 0))


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          options: str | None = None) -> None:
    check(libc.mount(encode(source), encode(target), encode(fstype), flags, encode(options)))


def encode(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


# --- outside: the process the caller started -------------------------------------------

def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # python -I -S made it KeyboardInterrupt
    config = json.loads(argv[1])
    config["more_argv"] = argv[2:]  # a wrapper's own arguments go on to the command
    try:
        with Step("die with the caller"):
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != config["parent"]:
            raise SetupError("start: the caller has already exited")
        enter_namespaces(config["network"])
        with Step("fork"):
            alive, keep_alive = os.pipe()  # EOF on `alive` tells the child we are gone
            pid = os.fork()
    except SetupError as exc:
        return fail(exc)
    if pid == 0:
        os.close(keep_alive)
        try:
            child(config, alive)
        except BaseException as exc:  # noqa: BLE001 - a bug here: say so, never return into main()
            os._exit(fail(SetupError(f"internal error: {exc!r}")))
    os.close(alive)
    return wait(pid)


def enter_namespaces(network: bool) -> None:
    uid, gid = os.geteuid(), os.getegid()
    flags = (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
             | CLONE_NEWCGROUP | (0 if network else CLONE_NEWNET))
    with Step("unshare", USERNS_HINT):
        check(libc.unshare(flags))
    with Step("write the uid and gid maps", USERNS_HINT):
        write_file("/proc/self/setgroups", "deny")
        write_file("/proc/self/uid_map", f"{uid} {uid} 1")
        write_file("/proc/self/gid_map", f"{gid} {gid} 1")


def wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def fail(exc: SetupError) -> int:
    print(f"sandbox: {exc}", file=sys.stderr, flush=True)
    return SETUP_FAILED


# --- inside: pid 1 of the new pid namespace ------------------------------------------

def child(config: dict, alive: int) -> None:
    """Build the sandbox and exec the command; never returns."""
    try:
        with Step("die with the parent"):
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            os.set_blocking(alive, False)
            try:
                if os.read(alive, 1) == b"":
                    os._exit(SETUP_FAILED)  # the parent died before PDEATHSIG was set
            except BlockingIOError:
                pass  # the parent lives
            os.close(alive)
        build_root(config)
        if not config["network"]:
            bring_up_loopback()
        with Step("forbid nested user namespaces"):
            write_file("/proc/sys/user/max_user_namespaces", "0")
        with Step("sethostname"):
            check(libc.sethostname(HOSTNAME, len(HOSTNAME)))
        enter_root(config["workdir"])
        drop_privileges()
    except SetupError as exc:
        os._exit(fail(exc))
    execute(config["argv"] + config.get("more_argv", []), environment(config))


def environment(config: dict) -> dict:
    """The spec's environment, plus the names of ``inherit`` found in ours (a name, or
    a prefix ending in '*'), less ``deny``; the spec's own values win."""
    wanted = config.get("inherit", [])
    deny = set(config.get("deny", []))

    def inherited(name: str) -> bool:
        return name not in deny and any(
            name.startswith(w[:-1]) if w.endswith("*") else name == w for w in wanted)

    return {**{k: v for k, v in os.environ.items() if inherited(k)}, **config["env"]}


def build_root(config: dict) -> None:
    with Step("make / private"):
        mount(None, "/", None, MS_REC | MS_PRIVATE)
    with Step(f"mount the new root on {STAGE}"):
        mount("tmpfs", STAGE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for path in SYSTEM_DIRS:
        expose_system_dir(path)
    mount_proc()
    mount_dev()
    with Step("mount /tmp"):
        mount("tmpfs", mountpoint("/tmp", True), "tmpfs", MS_NOSUID | MS_NODEV, TMP_OPTIONS)
    for path, kind in plan(config):  # after /tmp: the workdir may well be in it
        if kind == "hidden":
            mask(path)
        else:
            bind(path, path, readonly=kind == "readonly")
    for source, target in config.get("binds", []):  # read-write, at a path of their own
        bind(os.path.realpath(source), target, readonly=False)
    with Step("make / read-only"):
        remount_readonly(STAGE, below=False)


def plan(config: dict) -> list[tuple[str, str]]:
    """(path, "workdir" | "readonly" | "hidden") of each existing path to mount, parents
    first (a stable sort: at equal depth, readonly wins over the workdir and a mask over
    both), none beneath a mask."""
    hidden = [p for p in config["hidden"] if os.path.lexists(p)]
    wanted = ([(config["workdir"], "workdir")]
              + [(p, "readonly") for p in config["readonly"] if os.path.lexists(p)]
              + [(p, "hidden") for p in hidden])
    wanted = [(p, kind) for p, kind in wanted
              if not any(p.startswith(h.rstrip("/") + "/") for h in hidden)]
    return sorted(wanted, key=lambda item: item[0].rstrip("/").count("/"))


def expose_system_dir(path: str) -> None:
    """/usr and the like read-only; /bin and the like as the same symlink where they are
    one (a merged /usr)."""
    if os.path.islink(path):
        with Step(f"link {path}"):
            os.symlink(os.readlink(path), STAGE + path)
    elif os.path.isdir(path):
        bind(path, path, readonly=True)


def bind(source: str, path: str, readonly: bool) -> None:
    """``source`` at ``path`` in the new root, with what is mounted beneath it."""
    target = mountpoint(path, os.path.isdir(source))
    with Step(f"bind {path}"):
        mount(source, target, None, MS_BIND | MS_REC)
    if readonly:
        with Step(f"make {path} read-only"):
            remount_readonly(target, below=True)


def mask(path: str) -> None:
    """An empty read-only folder over a folder, an empty read-only file over a file;
    nothing where the new root does not show ``path`` anyway."""
    if not os.path.lexists(STAGE + path):
        return
    with Step(f"hide {path}"):
        if os.path.isdir(path):
            mount("tmpfs", mountpoint(path, True), "tmpfs",
                  MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0555,size=4k")
        else:
            empty = STAGE + "/.empty"
            os.close(os.open(empty, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o444))
            bind(empty, path, readonly=True)
            os.unlink(empty)  # the mount keeps the file; the root does not show it


def mountpoint(path: str, is_dir: bool) -> str:
    """Where ``path`` goes in the new root, created if missing (it is then on the root's
    own tmpfs). Refused if a symlink is on the way: the kernel would follow it out."""
    target = STAGE + path
    with Step(f"create the mount point {path}"):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if is_dir:
            os.makedirs(target, exist_ok=True)
        elif not os.path.lexists(target):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o444))
        if os.path.realpath(target) != target:
            raise OSError(0, "a symlink is on the way")
    return target


def remount_readonly(target: str, below: bool) -> None:
    """Remount read-only the mounts at ``target`` (and, if ``below``, beneath it),
    repeating the options the kernel locked."""
    for point, options in mounts().items():
        if point == target or (below and point.startswith(target + "/")):
            flags = sum(LOCKED_OPTIONS.get(o, 0) for o in options)
            if not {"noatime", "relatime"} & options:
                flags |= MS_STRICTATIME
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def mounts() -> dict[str, set[str]]:
    """The per-mount options of the mount on top at each mount point (the last one
    listed there), from /proc/self/mountinfo."""
    with open("/proc/self/mountinfo", "rb") as f:
        lines = f.read().splitlines()
    return {os.fsdecode(unescape(fields[4])): set(fields[5].decode().split(","))
            for fields in (line.split(b" ") for line in lines)}


def unescape(field: bytes) -> bytes:
    """A mountinfo path, whose space, tab, newline and backslash are octal escapes."""
    for escaped, plain in ((b"\\040", b" "), (b"\\011", b"\t"), (b"\\012", b"\n"),
                           (b"\\134", b"\\")):
        field = field.replace(escaped, plain)
    return field


def mount_proc() -> None:
    with Step("mount /proc", PROC_HINT):
        mount("proc", mountpoint("/proc", True), "proc",
              MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def mount_dev() -> None:
    dev = mountpoint("/dev", True)
    with Step("mount /dev"):
        mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=64k")
        for name, target in DEV_LINKS.items():
            os.symlink(target, f"{dev}/{name}")
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            bind(f"/dev/{name}", f"/dev/{name}", readonly=False)
    with Step("mount /dev/shm"):
        mount("tmpfs", mountpoint("/dev/shm", True), "tmpfs",
              MS_NOSUID | MS_NODEV, SHM_OPTIONS)
    with Step("make /dev read-only"):
        remount_readonly(dev, below=False)


def bring_up_loopback() -> None:
    """``ip link set lo up``: SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP."""
    with Step("bring up lo"):
        sock = check(libc.socket(AF_INET, SOCK_DGRAM, 0))
        try:
            ifreq = ctypes.create_string_buffer(b"lo", IFREQ_SIZE)
            check(libc.ioctl(sock, SIOCGIFFLAGS, ifreq))
            flags = ctypes.c_short.from_buffer(ifreq, IFR_FLAGS)
            flags.value |= IFF_UP
            check(libc.ioctl(sock, SIOCSIFFLAGS, ifreq))
        finally:
            os.close(sock)


def enter_root(workdir: str) -> None:
    """Make the new root ``/`` (the old one is stacked on it by ``pivot_root(".", ".")``,
    then detached) and go to the workdir."""
    machine = os.uname().machine
    if machine not in PIVOT_ROOT:
        raise SetupError(f"pivot_root: unknown system call number on {machine}")
    with Step("pivot_root"):
        os.chdir(STAGE)
        check(libc.syscall(PIVOT_ROOT[machine], b".", b"."))
        check(libc.umount2(b".", MNT_DETACH))
        os.chdir("/")
    with Step(f"chdir {workdir}"):
        os.chdir(workdir)


def drop_privileges() -> None:
    """No capability survives the exec (the bounding set is emptied: even a uid 0 gets
    none), and none can be gained (no set-uid, no file capabilities)."""
    with Step("drop capabilities"):
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        for cap in itertools.count():
            try:
                prctl(PR_CAPBSET_DROP, cap)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # past the last capability
                    raise
                break
    with Step("setsid"):
        os.setsid()


def execute(argv: list[str], env: dict[str, str]) -> None:
    """Exec the command with exactly ``env`` and only stdin, stdout and stderr open,
    searching ``env``'s PATH as ``execvpe`` does (``os.execvpe`` would import modules,
    and the standard library is not in the new root)."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; exec keeps that
        signal.signal(sig, signal.SIG_DFL)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    name = argv[0]
    folders = [""] if "/" in name else env.get("PATH", os.defpath).split(os.pathsep)
    error: OSError = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
    for folder in folders:
        try:
            os.execve(os.path.join(folder, name), argv, env)
        except (FileNotFoundError, NotADirectoryError):
            continue  # not in this folder
        except OSError as exc:
            error = exc  # e.g. not executable: said unless another folder has it
    print(f"sandbox: exec {name}: {error.strerror}", file=sys.stderr, flush=True)
    os._exit(NOT_FOUND if isinstance(error, FileNotFoundError) else NOT_EXECUTABLE)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
