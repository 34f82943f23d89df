"""Preparation in bounded memory: a big split is written shard by shard as datasets' own save_to_disk shards
it; a .json array is read a record at a time; the compact dedup index answers as a dict would."""

import json

import datasets
import numpy as np
import pyarrow as pa
import pytest

from openhermes.config import Recipe
from openhermes.data import prepare as prep_module
from openhermes.data.dedup import FirstSeen
from openhermes.data.prepare import prepare
from openhermes.data.readers import read_records


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_split_written_shard_by_shard_is_what_save_to_disk_writes(tmp_path, chatml_tokenizer, monkeypatch):
    recipe = Recipe(datasets=[{"path": "demo:chat:1500"}], sequence_len=512, val_set_size=0.05)
    whole = prepare(recipe, chatml_tokenizer, out_dir=tmp_path / "whole", cache_dir=tmp_path / "c", progress=False)
    assert len(list((whole.path / "train").glob("data-*.arrow"))) == 1
    monkeypatch.setattr(prep_module, "MAX_SHARD_BYTES", 200_000)
    sharded = prepare(recipe, chatml_tokenizer, out_dir=tmp_path / "sharded", cache_dir=tmp_path / "c2",
                      progress=False)
    n_shards = len(list((sharded.path / "train").glob("data-*.arrow")))
    assert n_shards > 3
    assert not list(sharded.path.rglob(".shard-*")) and not (sharded.path / ".samples").exists()
    # The reference: datasets itself saving the one-shard set in as many shards.
    ref = tmp_path / "ref"
    datasets.load_from_disk(str(whole.path / "train")).save_to_disk(str(ref), num_shards=n_shards)
    ours = _files(sharded.path / "train")
    theirs = _files(ref)
    assert ours.keys() == theirs.keys()
    for name in ours:
        if name == "state.json":  # the fingerprint datasets gives a re-saved copy is its own
            a, b = json.loads(ours[name]), json.loads(theirs[name])
            assert {k: v for k, v in a.items() if k != "_fingerprint"} == \
                {k: v for k, v in b.items() if k != "_fingerprint"}
        elif name.endswith(".arrow"):  # the same rows in each shard (pyarrow may pad a buffer differently)
            assert pa.ipc.open_stream(ours[name]).read_all().equals(pa.ipc.open_stream(theirs[name]).read_all())
        else:
            assert ours[name] == theirs[name], name
    loaded = datasets.load_from_disk(str(sharded.path))
    assert loaded["train"]["input_ids"] == datasets.load_from_disk(str(whole.path))["train"]["input_ids"]
    # The reports agree but for the key and the cache folder the demo rows were written to.
    same_cache = json.dumps(sharded.report).replace(str(tmp_path / "c2"), str(tmp_path / "c"))
    assert json.loads(same_cache) == whole.report | {"key": sharded.report["key"]}


def test_a_json_array_is_read_record_by_record(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}", "weight": 1.0}]}
            for i in range(5)]
    path = tmp_path / "hub.json"
    path.write_text(json.dumps(rows, indent=2))
    convs = list(read_records(str(path), "sharegpt"))
    assert [c.messages[1].content for c in convs] == [f"a{i}" for i in range(5)]
    assert [c.line for c in convs] == [1, 2, 3, 4, 5]
    # A break in the array: the records before it are read, and one error names where it broke.
    text = json.dumps(rows)
    path.write_text(text[: text.index('"q3"')] + '"q3", }}]')
    out = list(read_records(str(path), "sharegpt"))
    assert [c.messages[0].content for c in out[:3]] == ["q0", "q1", "q2"]
    assert out[3].where == f"{path}:4" and out[3].reason == "invalid JSON"
    assert len(out) == 4


def test_json_lines_and_a_data_object_under_a_json_name(tmp_path):
    row = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    lines = tmp_path / "lines.json"
    lines.write_text(json.dumps(row) + "\n{not json\n" + json.dumps(row) + "\n")
    out = list(read_records(str(lines), "sharegpt"))
    assert [getattr(o, "reason", "ok") for o in out] == ["ok", "invalid JSON", "ok"]
    assert out[1].where == f"{lines}:2"
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": [row, row]}, indent=1))
    assert len(list(read_records(str(wrapped), "sharegpt"))) == 2


def test_first_seen_answers_as_a_dict_across_runs(monkeypatch):
    monkeypatch.setattr(FirstSeen, "RUN", 64)  # many sorted runs, merged as they grow
    index, reference = FirstSeen(), {}
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 5000, size=20_000, dtype=np.uint64)  # many repeats
    for a in range(0, len(keys), 100):
        batch = keys[a:a + 100]
        old = index.in_runs(batch)
        for j, key in enumerate(batch.tolist()):
            assert index.get(key, int(old[j])) == reference.get(key)
            if key not in reference:
                reference[key] = a + j
                index.add(key, a + j)
        index.settle()
    assert len(index) == len(reference) and len(index.runs) < 12


@pytest.mark.parametrize("near", [0.9, None])
def test_dedup_keeps_the_first_copy_across_chunks(tmp_path, chatml_tokenizer, monkeypatch, near):
    monkeypatch.setattr(FirstSeen, "RUN", 8)
    monkeypatch.setattr(prep_module, "BATCH", 7)
    rows = [{"conversations": [{"from": "human", "value": f"question number {i % 40} about the river and the hills"},
                               {"from": "gpt", "value": f"answer number {i % 40}: the river runs past the hills"}]}
            for i in range(120)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    recipe = Recipe(datasets=[{"path": str(path)}], near_dedup_threshold=near)
    report = prepare(recipe, chatml_tokenizer, out_dir=tmp_path / "o", cache_dir=tmp_path, progress=False).report
    assert report["rows"]["kept"] <= 40
    details = report["rows"]["details"]
    assert len(details) == 120 - report["rows"]["kept"]
    for d in details:  # each dropped copy names an earlier row as the one kept
        assert int(d["where"].rsplit(":", 1)[1]) > int(d["detail"].rsplit(":", 1)[1])
