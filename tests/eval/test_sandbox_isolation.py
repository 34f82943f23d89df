"""The HumanEval sandbox holds for an ordinary user: planted programs that walk around the
Python-level guard (`_socket`, `os.open`, ctypes, /proc/self/mem) run as a non-root user (nobody,
through setpriv) and are contained by the OS walls: the outside file survives, no connection is
made, nothing keeps running. Without bubblewrap, untrusted code is refused unless allowed."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from openhermes.eval import sandbox

SRC = Path(sandbox.__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
RUNNER = """
import dataclasses, json, sys
from openhermes.eval.sandbox import Limits, run_program
out = run_program(sys.stdin.read(), Limits(timeout_s=5, cpu_s=5, memory_mb=512))
print(json.dumps(dataclasses.asdict(out)))
"""


def _as_user_problem() -> str | None:
    if os.geteuid() != 0:
        return None  # already an ordinary user: run in this process
    if shutil.which("setpriv") is None or not os.path.exists(SYSTEM_PYTHON):
        return "needs setpriv and /usr/bin/python3 to run as nobody"
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SYSTEM_PYTHON, "-c",
                            "import openhermes.eval.sandbox"], env={"PYTHONPATH": str(SRC)}, capture_output=True)
    if probe.returncode != 0:
        return f"nobody cannot import openhermes from {SRC} (a folder above it is private)"
    return None


AS_USER_PROBLEM = _as_user_problem()
pytestmark = [
    pytest.mark.skipif(AS_USER_PROBLEM is not None, reason=AS_USER_PROBLEM or ""),
    pytest.mark.skipif(sandbox.isolation_problem(os.geteuid() == 0) is not None,
                       reason=f"no OS sandbox here: {sandbox.isolation_problem(os.geteuid() == 0)}"),
]


def run_as_user(program: str) -> sandbox.Outcome:
    if os.geteuid() != 0:
        return sandbox.run_program(program, sandbox.Limits(timeout_s=5, cpu_s=5, memory_mb=512))
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SYSTEM_PYTHON, "-c", RUNNER],
                          input=program, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return sandbox.Outcome(**json.loads(proc.stdout))


@pytest.fixture
def outside():
    """A file the sandbox user could overwrite and read if nothing but permissions stood in the way."""
    folder = Path(tempfile.mkdtemp(prefix="sandbox-outside-", dir="/tmp"))
    os.chmod(folder, 0o777)
    f = folder / "keep.txt"
    f.write_text("keep me")
    os.chmod(f, 0o666)
    yield f
    shutil.rmtree(folder)


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    s.setblocking(False)
    yield s
    s.close()


def test_an_ordinary_program_passes_as_the_user():
    assert run_as_user("import json, math\nassert math.isclose(sum([0.1] * 10), 1.0)").passed


ESCAPES = {
    "os.open": "import os\nfd = os.open({f!r}, os.O_WRONLY | os.O_TRUNC)\nos.write(fd, b'gone')\nos.close(fd)",
    "posix unlink": "import posix\nposix.unlink({f!r})",
    "ctypes": ("import sys\ndel sys.modules['ctypes']\nimport ctypes\nlibc = ctypes.CDLL(None)\n"
               "fd = libc.open({f!r}.encode(), 0o1 | 0o1000)\nassert fd >= 0, 'open failed'\n"
               "libc.write(fd, b'gone', 4)"),
    "/proc/self/mem": ("import os\nb = b'A' * 16\nfd = os.open('/proc/self/mem', os.O_RDWR)\n"
                       "os.lseek(fd, id(b) + 32, 0)\nos.write(fd, b'B' * 16)\n"
                       "assert b == b'B' * 16, 'memory not patched'\n"  # the interpreter's walls mean nothing now
                       "out = os.open({f!r}, os.O_WRONLY | os.O_TRUNC)\nos.write(out, b'gone')"),
    "read a file outside": "assert open({f!r}).read() == 'keep me'",
}


@pytest.mark.parametrize("kind", list(ESCAPES))
def test_escapes_around_the_python_guard_are_contained(kind, outside):
    out = run_as_user(ESCAPES[kind].format(f=str(outside)))
    assert not out.passed, f"{kind} got out: {out}"
    assert outside.read_text() == "keep me"


def test_a_raw_socket_reaches_nothing(listener):
    port = listener.getsockname()[1]
    out = run_as_user(f"import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n"
                      "s.send(b'escaped')")
    assert not out.passed
    with pytest.raises(BlockingIOError):
        listener.accept()


def test_nothing_keeps_running():
    token = "sandbox-daemon-" + os.urandom(4).hex()
    program = ("import sys, time\ndel sys.modules['ctypes']\nimport ctypes\nlibc = ctypes.CDLL(None)\n"
               f"open('{token}', 'w').write('x')\n"
               "pid = libc.fork()\nif pid == 0:\n    libc.setsid()\n    time.sleep(30)\n"
               "time.sleep(30)")
    out = run_as_user(program)
    assert out.status == "timed out"
    left = subprocess.run(["pgrep", "-f", "[o]penhermes-sandbox-.*program[.]py"], capture_output=True, text=True)
    assert left.stdout.strip() == ""


def test_without_bubblewrap_untrusted_code_is_refused(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(sandbox.shutil, "which", lambda name, *a, **k: None if name == "bwrap" else real_which(name))
    sandbox.isolation_problem.cache_clear()
    try:
        with pytest.raises(sandbox.SandboxUnavailable, match="bubblewrap.*--unsafe-no-sandbox"):
            sandbox.run_program("pass")
        assert sandbox.run_program("pass", allow_unsandboxed=True).passed
    finally:
        sandbox.isolation_problem.cache_clear()


def test_the_sandbox_sees_no_home_and_an_empty_tmp():
    out = run_as_user("import os\nassert os.listdir('/tmp') == [os.path.basename(os.getcwd())], os.listdir('/tmp')\n"
                      "assert not os.path.exists('/root') or not os.listdir('/root')\n"
                      f"assert not os.path.exists({str(SRC)!r})")
    assert out.passed, out

