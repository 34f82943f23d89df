"""LimaRP as released: one YAML file per conversation under data/<forum>/<thread>.yaml (and data-long/),
placeholders <FIRST> (the character) and <SECOND> (the user); modifiers from the data; two arrangements."""

import json
from pathlib import Path

import numpy as np
from rich.console import Console

from openhermes.config import Recipe
from openhermes.data import lengths
from openhermes.data.inspect import inspect
from openhermes.data.prepare import prepare
from openhermes.data.readers import RowError, read_records
from openhermes.formats import limarp

# Written as LimaRP's files are: block scalars, placeholders inside the texts, personas and scenario.
THREAD = """\
personas:
  <FIRST>: >-
    <FIRST> is a knight of the northern march who distrusts <SECOND>.
  <SECOND>: A wandering bard.
names:
  <FIRST>: Aria
  <SECOND>: Sam
scenario: <SECOND> walks into the tavern where <FIRST> waits.
conversation:
- name: <FIRST>
  text: |
    *<FIRST> looks up from her mug.* Who are you?
- name: <SECOND>
  text: I am <SECOND>, a bard. May I sit?
- name: <FIRST>
  text: Sit, <SECOND>. But keep your songs to yourself.
"""

# The card's format with the real names, written out by hand (SPEC §2); each reply gets the modifier of
# its word count's bin under BINS below (9 words and 8 words: both short).
EXPECTED = (
    "### Instruction:\n"
    "Aria's Persona: Aria is a knight of the northern march who distrusts Sam.\n\n"
    "Sam's Persona: A wandering bard.\n\n"
    "Scenario: Sam walks into the tavern where Aria waits.\n\n"
    "Play the role of Aria. You must engage in a roleplaying chat with Sam below this line. "
    "Do not write dialogues and narration for Sam.\n\n"
    "### Response: (length = short)\n"
    "Aria: *Aria looks up from her mug.* Who are you?\n\n"
    "### Input:\n"
    "Sam: I am Sam, a bard. May I sit?\n\n"
    "### Response: (length = short)\n"
    "Aria: Sit, Sam. But keep your songs to yourself."
)
BINS = {"micro": 0, "tiny": 3, "short": 6, "medium": 12, "long": 24, "massive": 48, "huge": 96, "enormous": 192,
        "humongous": 384, "unlimited": 768}


def _thread(reply_words: list[int], i: int) -> str:
    turns = []
    for k, n in enumerate(reply_words):
        turns.append(f"- name: <SECOND>\n  text: Question {i}-{k} from <SECOND>?\n")
        turns.append("- name: <FIRST>\n  text: " + " ".join(f"w{i}x{k}x{j}" for j in range(n)) + "\n")
    return ("personas:\n  <FIRST>: A knight.\n  <SECOND>: A bard.\nnames:\n  <FIRST>: Aria\n  <SECOND>: Sam\n"
            f"scenario: Scene {i}.\nconversation:\n" + "".join(turns))


def _release(root: Path) -> Path:
    (root / "data" / "forum-a").mkdir(parents=True)
    (root / "data" / "forum-b").mkdir(parents=True)
    (root / "data-long" / "forum-a").mkdir(parents=True)
    (root / "data" / "forum-a" / "1001.yaml").write_text(THREAD)
    (root / "data" / "forum-b" / "2002.yaml").write_text(_thread([2, 8], 2))
    (root / "data-long" / "forum-a" / "3003.yaml").write_text(_thread([40, 15, 5], 3))
    return root


def test_yaml_folder_reads_with_names_substituted_everywhere(tmp_path):
    root = _release(tmp_path / "LimaRP")
    convs = list(read_records(str(root), "limarp"))
    assert [Path(c.source).name for c in convs] == ["1001.yaml", "2002.yaml", "3003.yaml"]  # data-long too
    first = convs[0]
    assert first.roleplay.char_name == "Aria" and first.roleplay.user_name == "Sam"
    text = limarp.render(first)
    assert "<FIRST>" not in text and "<SECOND>" not in text
    assert [m.role for m in first.messages] == ["assistant", "user", "assistant"]  # the character opens
    assert first.messages[0].content == "*Aria looks up from her mug.* Who are you?"  # block scalar's \n dropped


def test_bad_files_are_reported_and_the_rest_read(tmp_path):
    root = _release(tmp_path / "LimaRP")
    (root / "data" / "forum-a" / "bad.yaml").write_text("personas: [unclosed\n")
    (root / "data" / "forum-a" / "who.yaml").write_text(THREAD.replace("- name: <SECOND>", "- name: <THIRD>"))
    out = list(read_records(str(root), "limarp"))
    errors = {Path(e.source).name: e for e in out if isinstance(e, RowError)}
    assert errors["bad.yaml"].reason == "invalid YAML" and "line" in errors["bad.yaml"].detail
    assert errors["who.yaml"].reason == "unknown role" and "<THIRD>" in errors["who.yaml"].detail
    assert sum(not isinstance(c, RowError) for c in out) == 3


def _decoded(prep, tokenizer) -> list[tuple[str, str]]:
    """(whole text, trained text) of each packed sample."""
    out = []
    for row in prep.load()["train"]:
        ids, labels, seq = np.asarray(row["input_ids"]), np.asarray(row["labels"]), row["seq_lens"]
        start = 0
        for n in seq:
            i, lab = ids[start:start + n], labels[start:start + n]
            out.append((tokenizer.decode(i[1:]), tokenizer.decode(i[lab != -100])))
            start += n
    return out


def _recipe(root, **kw):
    return Recipe(datasets=[{"path": str(root), "type": "limarp"}], chat_template="limarp", sequence_len=2048,
                  sample_packing=True, **kw)


def test_card_text_modifiers_from_bins_and_labels_cover_the_replies(tmp_path, chatml_tokenizer):
    root = _release(tmp_path / "LimaRP")
    recipe = _recipe(root, limarp_length_modifiers={"unit": "words", "bins": BINS})
    prep = prepare(recipe, chatml_tokenizer, cache_dir=tmp_path, progress=False)
    samples = _decoded(prep, chatml_tokenizer)
    eos = chatml_tokenizer.eos_token
    whole = {t: trained for t, trained in samples}
    assert EXPECTED + eos in whole  # byte-equal to the card's format, names substituted
    # Trained: exactly each reply from the space after "Aria:" (the final one with EOS).
    trained = whole[EXPECTED + eos]
    assert trained.startswith("*Aria looks up") and trained.endswith("yourself." + eos)
    assert "Sam:" not in trained and "### " not in trained and "May I sit" not in trained
    # Each reply's modifier is its word count's bin.
    text3 = next(t for t in whole if "Scene 3." in t)
    mods = [line.split("= ")[1].rstrip(")") for line in text3.split("\n") if line.startswith("### Response: (")]
    assert mods == [lengths.modifier_for(n, BINS) for n in (40, 15, 5)] == ["long", "medium", "tiny"]
    hist = {b["modifier"]: b for b in prep.report["length_modifiers"]["histogram"]}
    assert {k: v["replies"] for k, v in hist.items()} == {"micro": 1, "tiny": 1, "short": 3, "medium": 1, "long": 1}
    assert hist["long"]["mean_length"] == 40 and (hist["long"]["from"], hist["long"]["to"]) == (24, 48)


def test_auto_bins_put_medium_in_the_middle():
    rng = np.random.default_rng(0)
    data = rng.lognormal(4, 0.8, size=2000).astype(int).tolist()
    bins = lengths.auto_bins(data)
    assert list(bins) == list(limarp.LENGTHS) and bins["micro"] == 0
    assert all(b > a for a, b in zip(list(bins.values()), list(bins.values())[1:], strict=False))
    mods = [lengths.modifier_for(n, bins) for n in data]
    assert lengths.modifier_for(int(np.median(data)), bins) == "medium"
    share = mods.count("medium") / len(mods)
    assert 0.27 <= share <= 0.33  # the middle 30%
    below = sum(limarp.LENGTHS.index(m) < limarp.LENGTHS.index("medium") for m in mods) / len(mods)
    assert 0.32 <= below <= 0.38


def test_omit_probability_leaves_modifiers_out_deterministically(tmp_path, chatml_tokenizer):
    root = tmp_path / "many" / "data" / "f"
    root.mkdir(parents=True)
    for i in range(60):
        (root / f"{i}.yaml").write_text(_thread([3 + i % 20, 5 + i % 7], i))
    spec = {"unit": "tokens", "bins": "auto", "omit": 0.5}
    a = prepare(_recipe(root.parents[1], limarp_length_modifiers=spec), chatml_tokenizer, cache_dir=tmp_path / "a",
                progress=False)
    b = prepare(_recipe(root.parents[1], limarp_length_modifiers=spec), chatml_tokenizer, cache_dir=tmp_path / "b",
                progress=False)
    lm = a.report["length_modifiers"]
    assert lm["unit"] == "tokens" and lm["assigned"] + lm["omitted"] == 120
    assert 40 <= lm["omitted"] <= 80
    assert lm == b.report["length_modifiers"]  # the same choices on a second run


def test_two_arrangements_double_the_rows_and_differ_only_in_the_instruction_block(tmp_path, chatml_tokenizer):
    root = _release(tmp_path / "LimaRP")
    recipe = _recipe(root, limarp_length_modifiers={"bins": BINS}, limarp_arrangements=["card", "instruction_first"])
    prep = prepare(recipe, chatml_tokenizer, cache_dir=tmp_path, progress=False)
    rows = prep.report["rows"]
    assert rows["rows_in"] == rows["kept"] == 3 and prep.report["samples"] == 6  # copies are not new rows
    assert prep.report["arrangements"] == {"card": 3, "instruction_first": 3}
    samples = _decoded(prep, chatml_tokenizer)
    eos = chatml_tokenizer.eos_token
    card = EXPECTED + eos
    head, rest = card.split("### Response:", 1)
    lines = head.removeprefix("### Instruction:\n").rstrip("\n").split("\n\n")
    rearranged = "### Instruction:\n" + "\n\n".join(lines[-1:] + lines[:-1]) + "\n\n### Response:" + rest
    whole = dict(samples)
    assert card in whole and rearranged in whole
    assert whole[card] == whole[rearranged]  # the same replies trained in both


def test_inspect_shows_the_modifier_histogram(tmp_path, chatml_tokenizer):
    root = _release(tmp_path / "LimaRP")
    recipe = _recipe(root, limarp_length_modifiers={"bins": BINS}, limarp_arrangements=["card", "instruction_first"])
    prep = prepare(recipe, chatml_tokenizer, out_dir=tmp_path / "prepared", progress=False)
    console = Console(record=True, width=140)
    inspect(prep.path, console=console)
    out = console.export_text()
    assert "LimaRP length modifiers (reply length in words)" in out
    line = next(row for row in out.splitlines() if row.strip("│ ").startswith("short"))
    assert "6–11" in line and " 3 " in line
    assert "card 3, instruction_first 3" in " ".join(out.split())


def test_hub_rows_with_extra_fields_and_turn_weights(tmp_path, chatml_tokenizer):
    """OpenHermes-2.5 rows as on the hub: extra fields, `weight` null on most turns; weight 0 = not trained."""
    rows = [{"id": f"r{i}", "source": "glaive-code-assist", "category": None, "skip_prompt_formatting": False,
             "avatarUrl": None, "hash": None, "conversations": [
                 {"from": "human", "value": f"question {i}", "weight": None},
                 {"from": "gpt", "value": f"draft answer {i}", "weight": 0},
                 {"from": "human", "value": "again", "weight": None},
                 {"from": "gpt", "value": f"final answer {i}", "weight": 1}]} for i in range(5)]
    path = tmp_path / "openhermes2_5.json"
    path.write_text(json.dumps(rows))
    recipe = Recipe(datasets=[{"path": str(path)}], sequence_len=256, near_dedup_threshold=None)
    prep = prepare(recipe, chatml_tokenizer, cache_dir=tmp_path, progress=False)
    assert prep.report["rows"]["kept"] == 5
    for row in prep.load()["train"]:
        ids, labels = np.asarray(row["input_ids"]), np.asarray(row["labels"])
        trained = chatml_tokenizer.decode(ids[labels != -100])
        assert trained.startswith("final answer") and "draft" not in trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"conversations": [{"from": "human", "value": "q"},
                                                 {"from": "gpt", "value": "a", "weight": "heavy"}]}))
    (err,) = read_records(str(bad), "sharegpt")
    assert isinstance(err, RowError) and "weight" in err.detail and err.line == 1
