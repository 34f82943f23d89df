"""README command 1's job: `openhermes train` with no recipe shows real learning on this machine."""

import json

import pytest


@pytest.mark.slow
def test_embedded_default_learns(embedded_default_run):
    assert "exact match (held-out chat items)" in (embedded_default_run / "stdout.txt").read_text()
    report = json.loads((embedded_default_run / "demo_report.json").read_text())
    trained, untrained = report["trained"], report["untrained"]
    # Floors below the benchmark's worst case over seeds and kernel modes (docs/benchmarks.md), with room for
    # other CPUs' rounding: every task >= 90% (copying included), lengths within 20%.
    assert trained["stops_with_im_end"] >= 0.99
    assert all(v >= 0.90 for v in trained["per_kind"].values()), trained["per_kind"]
    assert set(trained["per_kind"]) == {"add", "code", "copy", "lookup"}
    assert untrained["exact_match"] <= 0.05
    words = trained["roleplay_words"]
    lengths = [words[k] for k in ("tiny", "short", "medium", "long")]
    assert lengths == sorted(lengths) and len(set(lengths)) == 4  # reply length follows the modifier
    for got, target in zip(lengths, (4, 10, 20, 36), strict=True):  # each within 20% of its target
        assert abs(got / target - 1) <= 0.2, (lengths, "targets 4 / 10 / 20 / 36")
