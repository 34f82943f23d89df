"""README command 1's job: `openhermes train` with no recipe shows real learning on this machine."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_embedded_default_learns(tmp_path):
    env = os.environ | {"OPENHERMES_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "openhermes.cli", "train", "--out", str(tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exact match (held-out chat items)" in proc.stdout
    report = json.loads((tmp_path / "run" / "demo_report.json").read_text())
    trained, untrained = report["trained"], report["untrained"]
    assert trained["exact_match"] >= 0.5 and trained["stops_with_im_end"] >= 0.95
    assert untrained["exact_match"] <= 0.05
    words = trained["roleplay_words"]
    assert words["tiny"] < words["long"]  # reply length follows the length modifier
