"""README command 1's job: `openhermes train` with no recipe shows real learning on this machine."""

import json

import pytest


@pytest.mark.slow
def test_embedded_default_learns(embedded_default_run):
    assert "exact match (held-out chat items)" in (embedded_default_run / "stdout.txt").read_text()
    report = json.loads((embedded_default_run / "demo_report.json").read_text())
    trained, untrained = report["trained"], report["untrained"]
    assert trained["exact_match"] >= 0.5 and trained["stops_with_im_end"] >= 0.95
    assert untrained["exact_match"] <= 0.05
    words = trained["roleplay_words"]
    assert words["tiny"] < words["long"]  # reply length follows the length modifier
