"""Near-duplicate signatures estimate the Jaccard similarity of token 3-grams; the first copy is kept."""

import json

import numpy as np
import pytest

from openhermes.config import Recipe
from openhermes.data.dedup import signatures
from openhermes.data.prepare import prepare


def _grams(ids: np.ndarray) -> set[tuple[int, int, int]]:
    return set(zip(ids[:-2].tolist(), ids[1:-1].tolist(), ids[2:].tolist(), strict=True))


def _pair(rng: np.random.Generator, n: int, changed: float) -> tuple[np.ndarray, np.ndarray]:
    a = rng.integers(0, 5000, n).astype(np.int32)
    b = a.copy()
    where = rng.random(n) < changed
    b[where] = rng.integers(0, 5000, int(where.sum()))
    return a, b


@pytest.mark.parametrize("changed", [0.0, 0.02, 0.1, 0.3, 1.0])
def test_signature_agreement_estimates_the_exact_jaccard(changed):
    rng = np.random.default_rng(int(changed * 100))
    estimates, exact = [], []
    for _ in range(20):
        a, b = _pair(rng, int(rng.integers(50, 600)), changed)
        sa, sb = signatures([a, b], num_perm=128)
        estimates.append(float(np.mean(sa == sb)))
        ga, gb = _grams(a), _grams(b)
        exact.append(len(ga & gb) / len(ga | gb))
    # One estimate has a standard error of sqrt(J(1-J)/128) <= 0.045; the mean of 20 is 5x tighter.
    assert np.mean(estimates) == pytest.approx(np.mean(exact), abs=0.03)
    assert max(abs(e - x) for e, x in zip(estimates, exact, strict=True)) < 0.2


def test_a_signature_does_not_depend_on_its_chunk():
    rng = np.random.default_rng(1)
    samples = [rng.integers(0, 100, int(rng.integers(1, 300))).astype(np.int32) for _ in range(50)]
    together = signatures(samples)
    for s, sig in zip(samples, together, strict=True):
        (alone,) = signatures([s])
        assert (sig is None and alone is None) or np.array_equal(sig, alone)
    assert signatures([np.arange(5, dtype=np.int32)]) == [None]  # too short to judge: exact match only


def _row(human: str, gpt: str) -> dict:
    return {"conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]}


def test_the_first_copy_is_kept_and_a_dropped_row_hides_nothing(tmp_path, chatml_tokenizer):
    words = ("river stone cloud lamp garden window bridge candle forest mirror thunder violin harbor "
             "meadow lantern glacier orchard compass feather canyon").split()
    story = " ".join(words[(i * 7) % len(words)] + str(i) for i in range(70))
    short = " ".join(story.split()[:60])
    rows = [
        _row("Tell me a story.", story),            # 1: over-long at this sequence_len, dropped
        _row("Tell me a story.", short),            # 2: near twin of 1, but 1 was dropped: kept
        _row("Tell me a story.", short + " end"),   # 3: near twin of 2: dropped, naming line 2
        _row("Tell me a story.", short),            # 4: exact copy of 2
        _row("Something else?", "Planets orbit stars in elliptical paths, mostly."),
    ]
    f = tmp_path / "twins.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    text = chatml_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": short + " end"}], tokenize=False)
    n_short = len(chatml_tokenizer(text)["input_ids"])
    assert len(chatml_tokenizer(story)["input_ids"]) > n_short + 8
    recipe = Recipe(datasets=[{"path": str(f)}], sequence_len=n_short + 8, near_dedup_threshold=0.7)
    prep = prepare(recipe, chatml_tokenizer, out_dir=tmp_path / "o", cache_dir=tmp_path, progress=False)
    got = {int(d["where"].rsplit(":", 1)[1]): (d["reason"], d["detail"]) for d in prep.report["rows"]["details"]}
    assert got[1][0] == "over-long"
    assert got[3] == ("near duplicate", f"similar to {f}:2")
    assert got[4] == ("exact duplicate", f"same as {f}:2")
    assert set(got) == {1, 3, 4} and prep.report["rows"]["kept"] == 2
