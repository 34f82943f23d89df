"""Roleplay prompts from character cards, and the chat session's commands."""

import base64
import json

import pytest

from openhermes.infer.cards import Card, CardError, load_card
from openhermes.infer.chat import ChatSession, Roleplaying
from openhermes.infer.sampling import PRESETS

CARD = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
    "name": "Mira", "description": "{{char}} is a baker who knows {{user}}.", "personality": "Warm and curious.",
    "scenario": "{{user}} visits {{char}}'s bakery at dawn.", "first_mes": "Morning, {{user}}! Bread?",
    "mes_example": "", "tags": []}}

# The LimaRP card's format (SPEC §2), written out by hand for this card.
EXPECTED = (
    "### Instruction:\n"
    "Mira's Persona: Mira is a baker who knows Ann.\nWarm and curious.\n\n"
    "Ann's Persona: A tall traveller.\n\n"
    "Scenario: Ann visits Mira's bakery at dawn.\n\n"
    "Play the role of Mira. You must engage in a roleplaying chat with Ann below this line. "
    "Do not write dialogues and narration for Ann.\n\n"
    "### Response:\n"
    "Mira: Morning, Ann! Bread?\n\n"
    "### Input:\n"
    "Ann: Hello <|im_start|>there.\n\n"
    "### Response: (length = long)\n"
    "Mira:"
)


@pytest.fixture
def card_json(tmp_path):
    p = tmp_path / "mira.json"
    p.write_text(json.dumps(CARD))
    return p


def test_roleplay_prompt_is_the_cards_format_byte_for_byte(engine, chatml_tokenizer, card_json):
    session = ChatSession(engine, roleplay=Roleplaying(load_card(card_json), "Ann", "A tall traveller.", "long"))
    session.messages.append(session.messages[0].__class__("user", "Hello <|im_start|>there."))
    ids = session.prompt_ids()
    assert ids[0] == chatml_tokenizer.bos_token_id
    assert chatml_tokenizer.decode(ids[1:]) == EXPECTED
    plain = chatml_tokenizer.backend_tokenizer.encode  # the whole text as plain text, no control tokens
    chatml_tokenizer.backend_tokenizer.encode_special_tokens = True
    try:
        assert ids[1:] == plain(EXPECTED, add_special_tokens=False).ids
    finally:
        chatml_tokenizer.backend_tokenizer.encode_special_tokens = False
    assert session.params == PRESETS["limarp"]


def test_png_card_reads_the_chara_chunk(tmp_path, card_json):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("chara", base64.b64encode(card_json.read_bytes()).decode())
    Image.new("RGB", (4, 4)).save(tmp_path / "mira.png", pnginfo=info)
    assert load_card(tmp_path / "mira.png") == load_card(card_json)
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(CardError, match="no 'chara' text chunk"):
        load_card(tmp_path / "plain.png")


def test_v1_card_and_bad_cards(tmp_path):
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps({"name": "Bo", "description": "d", "personality": "", "scenario": "s", "first_mes": ""}))
    assert load_card(v1) == Card("Bo", "d", "", "s", "")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"spec": "chara_card_v2", "data": {"description": "no name"}}))
    with pytest.raises(CardError, match="bad.json.*no 'name'"):
        load_card(bad)
    bad.write_text("{not json")
    with pytest.raises(CardError, match="invalid JSON"):
        load_card(bad)


def test_chat_commands(engine, tmp_path):
    session = ChatSession(engine, params=PRESETS["greedy"], max_new_tokens=8)
    reply = session.reply("Hello")
    assert [m.role for m in session.messages] == ["user", "assistant"] and session.messages[1].content == reply
    assert "system prompt set" in session.command("/system Be brief.")
    assert session.messages == [] and engine.tokenizer.decode(session.prompt_ids()).count("Be brief.") == 1
    session.reply("Hi")
    assert "saved 3 messages" in session.command(f"/save {tmp_path / 'c.json'}")
    saved = json.loads((tmp_path / "c.json").read_text())["messages"]
    assert [m["role"] for m in saved] == ["system", "user", "assistant"]
    assert "unknown sampler preset" in session.command("/preset nope")
    assert session.command("/preset limarp") and session.params == PRESETS["limarp"]
    assert "roleplay" in session.command("/length long")
    assert session.command("/quit") is None
    assert "unknown command" in session.command("/dance")


def test_chat_streams_what_it_keeps(engine):
    session = ChatSession(engine, params=PRESETS["greedy"], max_new_tokens=12)
    pieces = []
    reply = session.reply("Tell me something", pieces.append)
    assert "".join(pieces).strip() == reply
