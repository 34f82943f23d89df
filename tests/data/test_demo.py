"""The embedded default stays an honest learner: the held-out items it is scored on are not among
the conversations of its training rows (read from the shipped tiny recipe's demo sets)."""

import json

from openhermes.config import load_recipe
from openhermes.data import demo


def _key(turns: list[dict]) -> str:
    return json.dumps([(t["from"], t["value"]) for t in turns])


def test_held_out_items_are_not_training_conversations():
    recipe = load_recipe("tiny")
    sizes = dict(p for d in recipe.datasets if (p := demo.parse_demo_path(d.path)))
    training_chats = {_key(r["conversations"]) for r in demo.chat_records(sizes["chat"])}
    # a roleplay item is scored on its prompt: compare with every training record cut before each reply
    # (the record up to a reply, and the length modifier that reply was written to)
    training_rp = {(json.dumps(r | {"turns": r["turns"][:k]}, sort_keys=True), r["turns"][k]["length"])
                   for r in demo.roleplay_records(sizes["roleplay"]) for k in range(1, len(r["turns"]), 2)}
    items = demo.held_out(train_chat=sizes["chat"], train_roleplay=sizes["roleplay"])
    chats = [it for it in items if it.kind != "roleplay"]
    assert len(chats) == 240 and {it.kind for it in chats} == {"copy", "add", "lookup", "code"}
    for it in chats:  # the asked conversation, completed with its expected answer
        full = it.record["conversations"] + [{"from": "gpt", "value": it.expected}]
        assert _key(full) not in training_chats
    for it in items:
        if it.kind == "roleplay":
            assert (json.dumps(it.record, sort_keys=True), it.length) not in training_rp
    # and the check is not vacuous: a training conversation would be caught
    first = next(demo.chat_records(1))
    assert _key(first["conversations"]) in training_chats
