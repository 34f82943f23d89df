import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openhermes.data.readers import RowError, read_records
from openhermes.formats import Message

SHAREGPT = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                              {"from": "gpt", "value": "A"}]}
EXPECTED = [Message("system", "S"), Message("user", "Q"), Message("assistant", "A")]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".jsonl.gz", ".parquet"])
def test_every_file_kind_reads(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    recs = [SHAREGPT, SHAREGPT]
    if suffix == ".json":
        path.write_text(json.dumps(recs))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in recs))
    elif suffix == ".jsonl.gz":
        with gzip.open(path, "wt") as f:
            f.write("\n".join(json.dumps(r) for r in recs))
    else:
        pq.write_table(pa.Table.from_pylist(recs), path)
    convs = list(read_records(str(path), "sharegpt"))
    assert [c.messages for c in convs] == [EXPECTED, EXPECTED]
    assert [c.line for c in convs] == [1, 2]


def test_role_content_and_openai_messages(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"conversations": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
            {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    for kind in ("sharegpt", "openai"):
        convs = list(read_records(str(path), kind))
        assert [c.messages for c in convs] == [[Message("user", "Q"), Message("assistant", "A")]] * 2


def test_alpaca_and_limarp(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"instruction": "Add", "input": "2 3", "output": "5"}))
    (conv,) = read_records(str(a), "alpaca")
    assert conv.messages == [Message("user", "Add", input="2 3"), Message("assistant", "5")]
    r = tmp_path / "r.jsonl"
    r.write_text(json.dumps({"char_name": "Aria", "user_name": "Sam", "char_persona": "p", "user_persona": "q",
                             "scenario": "s", "turns": [{"from": "Sam", "value": "hi"},
                                                        {"from": "char", "value": "yo", "length": "tiny"}]}))
    (conv,) = read_records(str(r), "limarp")
    assert conv.roleplay.char_name == "Aria"
    assert conv.messages == [Message("user", "hi"), Message("assistant", "yo", length="tiny")]


def test_missing_key_is_a_row_error_naming_the_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps(SHAREGPT) + "\n" + json.dumps({"instruction": "no output"}) + "\n")
    items = list(read_records(str(p), "alpaca"))
    assert isinstance(items[0], RowError) and items[0].line == 1  # sharegpt row lacks 'instruction'
    assert isinstance(items[1], RowError) and items[1].where == f"{p}:2" and "output" in items[1].detail
