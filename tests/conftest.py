"""Shared fixtures: a real tiny base model folder (tokenizer + random Mistral) built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def demo_texts(n_chat: int = 1500, n_rp: int = 200):
    from openhermes.data import demo

    for r in demo.chat_records(n_chat):
        yield " ".join(t["value"] for t in r["conversations"]) + " user assistant system"
    for r in demo.roleplay_records(n_rp):
        yield " ".join([r["char_persona"], r["scenario"]] + [t["value"] for t in r["turns"]])
    yield "Play the role of Character. You must engage in a roleplaying chat with User below this line."
    yield "héllo wörld — ünïcode 日本語 😀"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A from-scratch base folder like Mistral's: no ChatML tokens yet."""
    from openhermes.model.tiny import build_base

    return build_base(tmp_path_factory.mktemp("base") / "tiny", demo_texts(), vocab_size=600, seed=0,
                      hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2)


@pytest.fixture(scope="session")
def chatml_tokenizer(tiny_base):
    from openhermes.model.load import load_tokenizer

    return load_tokenizer(tiny_base, "chatml")


@pytest.fixture(scope="session")
def chat_model(tiny_base, chatml_tokenizer):
    """The tiny base with the ChatML rows added (random weights: behaviour, not quality)."""
    import torch

    from openhermes.model.load import load_model

    torch.manual_seed(0)
    model, _ = load_model(tiny_base, chatml_tokenizer)
    return model.eval()


@pytest.fixture(scope="session")
def engine(chat_model, chatml_tokenizer):
    from openhermes.infer.engine import Engine

    return Engine(chat_model, chatml_tokenizer)


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory, chat_model, chatml_tokenizer) -> Path:
    """chat_model saved as a model folder, as `openhermes train` writes one."""
    out = tmp_path_factory.mktemp("chat-model")
    chat_model.save_pretrained(out)
    chatml_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def embedded_default_run(tmp_path_factory) -> Path:
    """README command 1's job, `openhermes train` with no recipe, run once per test session.
    OPENHERMES_TEST_EMBEDDED_RUN=DIR reuses a finished run folder of this fixture (development only)."""
    import subprocess
    import sys

    reuse = os.environ.get("OPENHERMES_TEST_EMBEDDED_RUN")
    if reuse and (Path(reuse) / "stdout.txt").exists():
        return Path(reuse)

    out = tmp_path_factory.mktemp("embedded") / "run"
    env = os.environ | {"OPENHERMES_CACHE": str(out.parent / "cache")}
    proc = subprocess.run([sys.executable, "-m", "openhermes.cli", "train", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out / "stdout.txt").write_text(proc.stdout)
    return out


def pytest_terminal_summary(terminalreporter):
    from tests.fuzzing import CASES

    if CASES:
        terminalreporter.write_line("fuzz cases generated: " + ", ".join(f"{k} {v}" for k, v in sorted(CASES.items())))


@pytest.fixture
def small_disk(tmp_path):
    """A factory: a tmpfs of the given size, mounted for this test (needs root; skips otherwise)."""
    import subprocess

    mounts = []

    def make(size: str) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip() or 'mount failed'})")
        mounts.append(point)
        return point

    yield make
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
