"""--stream-interval: how a choice's text deltas are grouped into streamed chunks (serve/mailbox.py Deltas)."""

from openhermes.serve.mailbox import Deltas


def test_first_delta_at_once_then_groups_of_the_interval_then_the_rest_at_the_end():
    sent: list[str] = []
    group = Deltas(4, sent.append)
    for t in range(10):
        group.add(f"<{t}>")
    assert sent == ["<0>", "<1><2><3><4>", "<5><6><7><8>"]
    group.flush()  # the choice ended
    group.flush()  # nothing is sent twice
    assert sent == ["<0>", "<1><2><3><4>", "<5><6><7><8>", "<9>"]


def test_interval_one_sends_every_delta():
    sent: list[str] = []
    group = Deltas(1, sent.append)
    for t in "abc":
        group.add(t)
    assert sent == ["a", "b", "c"]
