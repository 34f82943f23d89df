"""Every bad row is reported with its file and line; every valid row is kept."""

import json

from openhermes.config import Recipe
from openhermes.data.prepare import prepare


def _good(i: int) -> bytes:
    return json.dumps({"conversations": [{"from": "human", "value": f"Question number {i}?"},
                                         {"from": "gpt", "value": f"Answer number {i}."}]}).encode()


BAD = {  # reason -> raw JSONL line
    "invalid JSON": b'{"conversations": [',
    "invalid UTF-8": b'{"conversations": [{"from": "human", "value": "caf\xe9"}]}',
    "malformed record": b'["not", "an", "object"]',
    "unknown role": json.dumps({"conversations": [{"from": "narrator", "value": "x"},
                                                  {"from": "gpt", "value": "y"}]}).encode(),
    "non-string turn": json.dumps({"conversations": [{"from": "human", "value": 42},
                                                     {"from": "gpt", "value": "y"}]}).encode(),
    "empty turn": json.dumps({"conversations": [{"from": "human", "value": "hi"},
                                                {"from": "gpt", "value": "   "}]}).encode(),
    "role order": json.dumps({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                                                {"from": "gpt", "value": "c"}]}).encode(),
    "no assistant turn": json.dumps({"conversations": [{"from": "human", "value": "hello?"}]}).encode(),
    "refusal": json.dumps({"conversations": [{"from": "human", "value": "Write a poem"},
                                             {"from": "gpt", "value": "As an AI language model, I cannot."}]}).encode(),
    "exact duplicate": _good(0),
    "over-long": json.dumps({"conversations": [{"from": "human", "value": "long " * 400},
                                               {"from": "gpt", "value": "ok"}]}).encode(),
}
LONE_SURROGATE = b'{"conversations": [{"from": "human", "value": "bad \\ud800 text"}, {"from": "gpt", "value": "x"}]}'


def test_bad_rows_are_reported_with_file_and_line(tmp_path, chatml_tokenizer):
    lines, expected = [], {}
    n_good = 0
    for reason, raw in BAD.items():
        lines.append(_good(n_good))  # a valid row before each bad one
        n_good += 1
        lines.append(raw)
        expected[len(lines)] = reason
    lines.append(LONE_SURROGATE)
    expected[len(lines)] = "invalid UTF-8"
    lines.append(b'{"messages": [{"role": "user", "content": "ok?"}, {"role": "assistant"}]}')
    expected[len(lines)] = "malformed record"
    f = tmp_path / "mixed.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")

    recipe = Recipe(datasets=[{"path": str(f), "type": "sharegpt"}], sequence_len=256, near_dedup_threshold=None)
    prep = prepare(recipe, chatml_tokenizer, out_dir=tmp_path / "out", cache_dir=tmp_path, progress=False)
    rows = prep.report["rows"]
    got = {int(d["where"].rsplit(":", 1)[1]): d["reason"] for d in rows["details"]}
    assert all(d["where"].startswith(str(f)) for d in rows["details"])
    assert got == expected
    assert len(set(expected.values())) >= 10
    assert rows["kept"] == n_good
    assert rows["rows_in"] == rows["kept"] + sum(rows["dropped"].values())


def test_strict_makes_any_drop_an_error(tmp_path, chatml_tokenizer):
    import pytest

    from openhermes.data.checks import StrictError

    f = tmp_path / "d.jsonl"
    f.write_bytes(_good(1) + b"\n" + BAD["empty turn"] + b"\n")
    recipe = Recipe(datasets=[{"path": str(f)}], near_dedup_threshold=None)
    with pytest.raises(StrictError, match=r"d\.jsonl:2: empty turn"):
        prepare(recipe, chatml_tokenizer, out_dir=tmp_path / "o", cache_dir=tmp_path, strict=True, progress=False)


def test_near_duplicates_are_dropped(tmp_path, chatml_tokenizer):
    base = "the quick brown fox jumps over the lazy dog near the river bank at dawn every single day"
    rows = [{"conversations": [{"from": "human", "value": base + suffix}, {"from": "gpt", "value": "Noted: " + base}]}
            for suffix in ("", " again", "!")]
    rows.append({"conversations": [{"from": "human", "value": "something else entirely about planets"},
                                   {"from": "gpt", "value": "Planets orbit stars in elliptical paths."}]})
    f = tmp_path / "near.json"
    f.write_text(json.dumps(rows))
    recipe = Recipe(datasets=[{"path": str(f)}], near_dedup_threshold=0.7)
    prep = prepare(recipe, chatml_tokenizer, out_dir=tmp_path / "o", cache_dir=tmp_path, progress=False)
    assert prep.report["rows"]["dropped"] == {"near duplicate": 2}
    assert prep.report["rows"]["kept"] == 2
