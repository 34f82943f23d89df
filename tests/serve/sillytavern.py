"""A real SillyTavern for the tests: its own node server, from `scripts/setup.sh --dev`'s npm install
(`.sillytavern/`, SillyTavern's release as published on npm) or a checkout named by OPENHERMES_SILLYTAVERN.
Without node or either of them, the tests that need it skip."""

import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = Path(os.environ.get("OPENHERMES_SILLYTAVERN", ROOT / ".sillytavern" / "node_modules" / "sillytavern"))
# npm hoists SillyTavern's dependencies to the node_modules folder it sits in; a git checkout has its own
AVAILABLE = ((CHECKOUT / "server.js").exists() and shutil.which("node") is not None
             and any((p / "node_modules").exists() for p in (CHECKOUT, CHECKOUT.parent.parent)))
# What SillyTavern's server forwards of a Chat Completion body to a Custom source's /chat/completions
# (src/endpoints/backends/chat-completions.js); the other fields are its own.
CUSTOM_SOURCE_FIELDS = ("messages", "model", "temperature", "max_tokens", "stream", "presence_penalty",
                        "frequency_penalty", "top_p", "stop", "logit_bias", "seed", "n")
needs_sillytavern = pytest.mark.skipif(not AVAILABLE, reason="no SillyTavern (scripts/setup.sh --dev installs it "
                                       "with npm; or set OPENHERMES_SILLYTAVERN to a checkout with node_modules)")


@contextmanager
def running_sillytavern(data_root: Path):
    """SillyTavern on a free loopback port with a fresh data folder: yields its URL."""
    port = free_port()
    proc = subprocess.Popen(["node", "server.js", "--port", str(port), "--listen", "false", "--disableCsrf",
                             "--whitelist", "false", "--dataRoot", str(data_root)], cwd=CHECKOUT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("SillyTavern exited:\n" + proc.stdout.read())
            try:
                if httpx.get(url + "/", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("SillyTavern did not start in 180 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
