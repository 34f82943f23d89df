"""The prepared set: Arrow folder, content-keyed cache invalidated by each setting, mixing report."""

import json
from pathlib import Path

import pytest

from openhermes.config import Recipe
from openhermes.data.prepare import PREP_SETTINGS, prepare


def _write(path, n, prefix="q"):
    rows = [{"conversations": [{"from": "human", "value": f"{prefix} {i} please"},
                               {"from": "gpt", "value": f"answer {i} " * (1 + i % 7)}]} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.fixture
def data_file(tmp_path):
    return _write(tmp_path / "d.jsonl", 60)


def _recipe(path, **kw):
    return Recipe(datasets=[{"path": str(path)}], sequence_len=128, sample_packing=True,
                  near_dedup_threshold=None, **kw)


def test_prepared_rows_are_packed_and_masked(tmp_path, data_file, chatml_tokenizer):
    prep = prepare(_recipe(data_file), chatml_tokenizer, cache_dir=tmp_path, progress=False)
    ds = prep.load()["train"]
    assert set(ds.column_names) == {"input_ids", "labels", "position_ids", "seq_lens"}
    row = ds[0]
    assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) == sum(row["seq_lens"]) <= 128
    assert sum(len(r) for r in ds["input_ids"]) == prep.report["tokens"]
    assert prep.report["rows"]["kept"] == 60 and prep.report["packing_efficiency"] > 0.8


CHANGES = {
    "prompt_format": "alpaca", "sequence_len": 256, "sample_packing": False, "pad_to_sequence_len": True,
    "train_on_inputs": True, "roles_to_train": ["assistant", "user"], "long_samples": "truncate",
    "add_bos": False, "dedup": False, "near_dedup_threshold": 0.8, "refusal_filter": False,
    "refusal_phrases": ["nope"], "val_set_size": 0.1, "seed": 7,
    "limarp_length_modifiers": {"unit": "tokens"}, "limarp_arrangements": ["card", "instruction_first"],
}


def test_cache_hits_on_same_inputs_and_misses_on_each_change(tmp_path, data_file, chatml_tokenizer):
    assert set(CHANGES) == set(PREP_SETTINGS)  # every setting the pipeline reads is in the key
    first = prepare(_recipe(data_file), chatml_tokenizer, cache_dir=tmp_path, progress=False)
    again = prepare(_recipe(data_file), chatml_tokenizer, cache_dir=tmp_path, progress=False)
    assert again.cache_hit and again.key == first.key
    keys = {first.key}
    for name, value in CHANGES.items():
        r = Recipe(**(_recipe(data_file).model_dump() | {name: value}))
        from openhermes.data.prepare import cache_key

        keys.add(cache_key(r, chatml_tokenizer, [str(data_file)]))
    assert len(keys) == len(CHANGES) + 1


def test_cache_misses_when_file_content_or_tokenizer_change(tmp_path, data_file, chatml_tokenizer):
    first = prepare(_recipe(data_file), chatml_tokenizer, cache_dir=tmp_path, progress=False)
    _write(data_file, 60, prefix="Q")  # same name and size, different bytes
    second = prepare(_recipe(data_file), chatml_tokenizer, cache_dir=tmp_path, progress=False)
    assert not second.cache_hit and second.key != first.key
    chatml_tokenizer_copy = type(chatml_tokenizer).from_pretrained(second.path / "tokenizer")
    chatml_tokenizer_copy.add_tokens(["<extra>"])
    third = prepare(_recipe(data_file), chatml_tokenizer_copy, cache_dir=tmp_path, progress=False)
    assert not third.cache_hit and third.key != second.key


def test_mix_reaches_target_shares_and_accounts_for_every_row(tmp_path, chatml_tokenizer):
    code = _write(tmp_path / "code.jsonl", 40, prefix="code")
    chat = _write(tmp_path / "chat.jsonl", 300, prefix="chat")
    recipe = Recipe(datasets=[{"path": str(code), "share": 0.1, "label": "code"},
                              {"path": str(chat), "label": "chat"}], sequence_len=128, near_dedup_threshold=None)
    prep = prepare(recipe, chatml_tokenizer, cache_dir=tmp_path, progress=False)
    mix = prep.report["mix"]
    assert mix["code"]["share"] == pytest.approx(0.1, abs=0.01)
    rows = prep.report["rows"]
    assert rows["rows_in"] == 340 == rows["kept"] + sum(rows["dropped"].values())
    assert rows["dropped"] == {"left out by the mix": 340 - rows["kept"]}


def test_truncate_policy_keeps_and_reports(tmp_path, chatml_tokenizer):
    f = tmp_path / "long.jsonl"
    f.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"},
                                               {"from": "gpt", "value": "word " * 300}]}))
    prep = prepare(_recipe(f, long_samples="truncate"), chatml_tokenizer, cache_dir=tmp_path, progress=False)
    assert prep.report["rows"]["kept"] == 1 and len(prep.load()["train"][0]["input_ids"]) == 128
    with pytest.raises(ValueError, match="over-long"):
        prepare(_recipe(f), chatml_tokenizer, cache_dir=tmp_path / "x", progress=False)


def _edited_copy(src, dst, old: str, new: str):
    text = src.read_text(encoding="utf-8")
    assert old in text
    dst.write_text(text.replace(old, new, 1), encoding="utf-8")
    return dst


def test_the_cache_key_follows_the_code(tmp_path, monkeypatch, data_file, chatml_tokenizer):
    """No version to bump by hand: an edit to a prompt format or a data module's source re-prepares."""
    import shutil

    import openhermes.data.tokenize as tokenize_module
    import openhermes.formats as formats
    from openhermes.data.prepare import cache_key

    recipe = _recipe(data_file)
    before = cache_key(recipe, chatml_tokenizer, [str(data_file)])
    assert cache_key(recipe, chatml_tokenizer, [str(data_file)]) == before

    # the ChatML format's text changes (a copy of the formats package with one edited line)
    edited = tmp_path / "formats"
    shutil.copytree(formats.__path__[0], edited, ignore=shutil.ignore_patterns("__pycache__"))
    _edited_copy(edited / "chatml.py", edited / "chatml.py", "<|im_start|>", "<|im_start|> ")
    monkeypatch.setattr(formats.__spec__, "submodule_search_locations", [str(edited)])
    after_format = cache_key(recipe, chatml_tokenizer, [str(data_file)])
    assert after_format != before
    monkeypatch.undo()

    # the tokenizing module's source changes
    copy = _edited_copy(Path(tokenize_module.__file__), tmp_path / "tokenize.py",
                        "def ", "def  ")
    monkeypatch.setattr(tokenize_module.__spec__, "origin", str(copy))
    assert cache_key(recipe, chatml_tokenizer, [str(data_file)]) not in (before, after_format)
    monkeypatch.undo()
    assert cache_key(recipe, chatml_tokenizer, [str(data_file)]) == before
