from openhermes.formats import Conversation, Message, alpaca


def test_alpaca_with_input_uses_the_stanford_preamble():
    conv = Conversation([Message("user", "Sum these.", input="2 3"), Message("assistant", "5")])
    assert alpaca.render(conv) == (
        alpaca.PREAMBLE_INPUT + "### Instruction:\nSum these.\n\n### Input:\n2 3\n\n### Response:\n5")


def test_alpaca_trains_output_and_eos():
    segs = alpaca.segments(Conversation([Message("user", "Hi"), Message("assistant", "Hello")]))
    assert [(s.text, s.kind) for s in segs if s.train] == [("Hello", "text"), ("", "eos")]
