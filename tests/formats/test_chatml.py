import jinja2
import pytest

from openhermes.formats import Conversation, Message, chatml

# Copied from the published OpenHermes 2.5 tokenizer_config.json (SPEC §2), independent of our module.
PUBLISHED_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CASES = {
    "multi-turn with system": [("system", "You are Hermes."), ("user", "Hi!"), ("assistant", "Hello."),
                               ("user", "2+2?"), ("assistant", "4")],
    "no system": [("user", "Tell me a joke"), ("assistant", "Why did the chicken...\n\nNever mind.")],
    "unicode": [("user", "Ça va? 日本語 😀 \u200b"), ("assistant", "Très bien — ✓")],
}


def _published(messages, add_generation_prompt):
    return jinja2.Environment().from_string(PUBLISHED_TEMPLATE).render(
        messages=[{"role": r, "content": c} for r, c in messages], add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("gen", [False, True])
def test_render_equals_published_template(name, gen):
    conv = Conversation([Message(r, c) for r, c in CASES[name]])
    assert chatml.render(conv, add_generation_prompt=gen) == _published(CASES[name], gen)


def test_our_template_string_is_the_published_one():
    assert chatml.PUBLISHED_TEMPLATE == PUBLISHED_TEMPLATE
    assert chatml.CHAT_TEMPLATE == "{{ bos_token }}" + PUBLISHED_TEMPLATE  # the saved one: BOS first, as the rows


def test_saved_tokenizer_apply_chat_template_matches(chatml_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    chatml_tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    for msgs in CASES.values():
        conv = Conversation([Message(r, c) for r, c in msgs])
        text = tok.apply_chat_template([{"role": r, "content": c} for r, c in msgs], tokenize=False)
        assert text == tok.bos_token + chatml.render(conv)  # BOS first, as the training rows


def test_parse_roundtrip():
    msgs = [Message(r, c) for r, c in CASES["multi-turn with system"]]
    assert chatml.parse(chatml.render(Conversation(msgs), add_generation_prompt=True)) == msgs


def test_default_trains_only_assistant_content_and_im_end():
    segs = chatml.segments(Conversation([Message("user", "q"), Message("assistant", "a")]))
    trained = [(s.text, s.kind) for s in segs if s.train]
    assert trained == [("a", "text"), ("<|im_end|>", "control")]
