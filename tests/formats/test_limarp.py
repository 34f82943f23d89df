import pytest

from openhermes.formats import Conversation, Message, Roleplay, limarp

RP = Roleplay("Aria", "Sam", "Aria is a brave knight.", "Sam is a traveller.", "They meet in a tavern.")

# The LimaRP card's format, with User/Character replaced by the real names (SPEC §2), written out by hand.
CARD = (
    "### Instruction:\n"
    "Aria's Persona: Aria is a brave knight.\n\n"
    "Sam's Persona: Sam is a traveller.\n\n"
    "Scenario: They meet in a tavern.\n\n"
    "Play the role of Aria. You must engage in a roleplaying chat with Sam below this line. "
    "Do not write dialogues and narration for Sam.\n\n"
    "### Input:\n"
    "Sam: Hello there!\n\n"
    "### Response: (length = medium)\n"
    "Aria: I nod and smile."
)


def test_render_matches_the_card_byte_for_byte():
    conv = Conversation([Message("user", "Hello there!"), Message("assistant", "I nod and smile.", length="medium")],
                        roleplay=RP)
    assert limarp.render(conv) == CARD


def test_generation_prompt_carries_the_length_modifier():
    conv = Conversation([Message("user", "Hello there!")], roleplay=RP)
    assert limarp.render(conv, add_generation_prompt=True, length="long").endswith(
        "### Input:\nSam: Hello there!\n\n### Response: (length = long)\nAria:")


def test_no_modifier_when_omitted():
    conv = Conversation([Message("user", "Hi"), Message("assistant", "Yo.")], roleplay=RP)
    assert "### Response:\nAria: Yo." in limarp.render(conv)


def test_all_ten_modifiers_and_a_bad_one():
    assert len(limarp.LENGTHS) == 10
    for n in limarp.LENGTHS:
        assert f"(length = {n})" in limarp.response_header("Aria", n)
    with pytest.raises(ValueError, match="length modifier"):
        limarp.response_header("Aria", "gigantic")


def test_parse_accepts_input_with_and_without_colon():
    conv = limarp.parse(CARD)
    assert conv.roleplay == RP
    assert conv.messages == [Message("user", "Hello there!"), Message("assistant", "I nod and smile.", length="medium")]
    assert limarp.parse(CARD.replace("### Input:\n", "### Input\n")).messages == conv.messages


def test_multi_turn_trains_each_reply_and_final_eos_only_at_end():
    conv = Conversation([Message("user", "a"), Message("assistant", "b", "short"), Message("user", "c"),
                         Message("assistant", "d", "long")], roleplay=RP)
    segs = limarp.segments(conv)
    trained = [(s.text, s.kind) for s in segs if s.train]
    assert trained == [(" b", "text"), (" d", "text"), ("", "eos")]


def test_gguf_chat_template_renders_the_card_text():
    """The template LM Studio/llama.cpp users get: the system message holds the instruction body and the
    messages carry the real names; the text equals our renderer's (which equals the card's, above)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = ImmutableSandboxedEnvironment().from_string(limarp.CHAT_TEMPLATE)
    messages = [{"role": "system", "content": limarp.instruction_body(RP)},
                {"role": "user", "name": "Sam", "content": "Hello there!"},
                {"role": "assistant", "name": "Aria", "content": "I nod and smile."},
                {"role": "user", "name": "Sam", "content": "Good."}]
    text = template.render(messages=messages, add_generation_prompt=True, eos_token="</s>")
    conv = Conversation([Message("user", "Hello there!"), Message("assistant", "I nod and smile."),
                         Message("user", "Good.")], roleplay=RP)
    assert text == limarp.render(conv, add_generation_prompt=True, length="medium")
    assert text.endswith("### Response: (length = medium)\nAria:")
    assert template.render(messages=messages, add_generation_prompt=True, length="long",
                           char_name="Aria").endswith("(length = long)\nAria:")
    closed = template.render(messages=messages[:3], eos_token="</s>")
    assert closed == limarp.render(Conversation([Message("user", "Hello there!"), Message("assistant", "I nod and smile.")],
                                                roleplay=RP)) + "</s>"
    assert CARD.replace(" (length = medium)", "") + "</s>" == closed
