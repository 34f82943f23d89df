"""Real server processes on loopback (`openhermes serve`), over real model folders."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest

API_KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model_dir, *args: str, api_key: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        cmd = [sys.executable, "-m", "openhermes.cli", "serve", str(model_dir), "--port", str(self.port),
               "--model-name", "tiny-chat", *args]
        if api_key:
            cmd += ["--api-key", api_key]
        env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + self.proc.stdout.read())
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not start in 120 s")

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()

    def metric(self, name: str) -> float:
        for line in httpx.get(self.url + "/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def server(chat_model_dir):
    s = Server(chat_model_dir, api_key=API_KEY)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def open_server(chat_model_dir):
    """A server with no key (SillyTavern keeps keys in its own secrets store; lm-eval's local-completions sends
    none), shared by the modules that drive it from another program."""
    s = Server(chat_model_dir)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def sillytavern_url(tmp_path_factory):
    """One SillyTavern (its npm release) for the session: starting it takes 10-20 s here."""
    from tests.serve.sillytavern import running_sillytavern

    with running_sillytavern(tmp_path_factory.mktemp("st-data")) as url:
        yield url


def with_context(src, dst, window: int):
    """A copy of a model folder with another context window (the tiny model is too fast for some tests
    at 2048 tokens, and too slow to fuzz)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copy(f, dst / f.name)
    config = json.loads((dst / "config.json").read_text())
    config["max_position_embeddings"] = window
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="session")
def small_context_dir(tmp_path_factory, chat_model_dir):
    """64 tokens: every request is short (for the fuzzer)."""
    return with_context(chat_model_dir, tmp_path_factory.mktemp("ctx64"), 64)


@pytest.fixture(scope="session")
def long_context_dir(tmp_path_factory, chat_model_dir):
    """32k tokens: a reply that would take many seconds, so stopping it early is visible."""
    return with_context(chat_model_dir, tmp_path_factory.mktemp("ctx32k"), 32768)


@pytest.fixture(scope="session")
def narrow_server(long_context_dir):
    """One request decoding at a time, one waiting; replies of up to 32k tokens."""
    s = Server(long_context_dir, "--max-batch-size", "1", "--max-queue", "1")
    yield s
    s.stop()
