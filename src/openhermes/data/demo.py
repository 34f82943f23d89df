"""The bundled demo data set, generated deterministically: small tasks a tiny model can learn.

Chat (ShareGPT rows): copying, one-digit sums, lookups from two small tables and short Python
functions, with and without system prompts, one to three turns. Roleplay (LimaRP rows): replies
whose length follows the length modifier. `held_out` gives items that are not in the training rows.

The mix is weighted to what a tiny model learns last: copying (an induction circuit) and the sums
table take 4 parts each, lookups and code (learned within the first epoch) one part each.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

WORDS = (
    "apple river stone cloud green music paper tiger window silver orange garden rocket candle "
    "forest yellow castle pencil summer winter bridge dragon mirror planet shadow violet anchor "
    "button coffee desert engine falcon harbor island jacket kitten lemon marble needle"
).split()
CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Egypt": "Cairo",
    "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo", "Chile": "Santiago", "Greece": "Athens",
    "Canada": "Ottawa", "Cuba": "Havana", "Poland": "Warsaw", "Ireland": "Dublin", "Austria": "Vienna",
    "Portugal": "Lisbon",
}
COLORS = {
    "banana": "yellow", "lime": "green", "cherry": "red", "plum": "purple", "carrot": "orange",
    "coal": "black", "snow": "white", "sky": "blue", "grass": "green", "blood": "red",
}
FUNC_NAMES = (
    "combine calc merge apply mix fuse blend pair join2 work solve step crunch mash link tally "
    "reckon figure compute evaluate"
).split()
OPS = {"sum": "+", "difference": "-", "product": "*"}
SYSTEMS = (
    "You are Hermes, a helpful assistant.",
    "You are a concise assistant. Answer briefly.",
    "You answer questions exactly.",
    "You are a careful AI that follows instructions.",
)

LENGTH_WORDS = {"tiny": 4, "short": 10, "medium": 20, "long": 36}
CHARS = ("Aria", "Borin", "Cassia", "Dax", "Elowen", "Fenn", "Gwen", "Hale")
USERS = ("Sam", "Robin", "Alex", "Jo", "Kit", "Lee")
TRAITS = ("brave knight", "curious wizard", "cheerful baker", "grumpy sailor", "quiet archer", "clever thief")
PLACES = ("a busy tavern", "an old library", "a snowy mountain pass", "a market square", "a ship at sea")
USER_LINES = (
    "Hello there! What are you doing here?", "Can you help me find the way?", "Tell me about yourself.",
    "What should we do next?", "Did you hear that noise?", "I brought you a gift.",
)
REPLY_SENTENCES = (
    "I smile and wave at you.", "The fire crackles softly beside us.", "I lean closer and lower my voice.",
    "We should be careful tonight.", "I reach for my bag and pull out a map.", "The wind howls outside.",
    "I laugh and shake my head.", "Follow me, I know a safe path.", "My eyes narrow as I listen.",
    "I have waited a long time for this day.",
)


TASK_WEIGHTS = {"copy": 4, "add": 4, "lookup": 1, "code": 1}
TASK_KINDS = tuple(kind for kind, weight in TASK_WEIGHTS.items() for _ in range(weight))
CHAT_TURNS = (1, 2, 3)  # tasks per conversation: several amortise the system prompt and the framing
SYSTEM_SHARE = 0.5
ROLEPLAY_EXCHANGES = (1, 2, 2)  # replies per LimaRP record: the length signal per persona header


@dataclass(frozen=True)
class HeldOutItem:
    kind: str  # copy | add | lookup | code | roleplay
    record: dict  # ShareGPT or LimaRP record whose last turn is the prompt's user turn
    expected: str  # exact expected reply ("" for roleplay)
    length: str | None = None


def _task(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.choice(TASK_KINDS)
    if kind == "copy":
        words = " ".join(rng.sample(WORDS, rng.randint(2, 3)))
        # The words start a line in both turns, so they tokenize the same way (no leading "▁").
        return kind, f"Repeat exactly:\n{words}", words
    if kind == "add":
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return kind, f"What is {a} + {b}?", str(a + b)
    if kind == "lookup":
        if rng.random() < 0.6:
            country = rng.choice(sorted(CAPITALS))
            return kind, f"What is the capital of {country}?", CAPITALS[country]
        thing = rng.choice(sorted(COLORS))
        return kind, f"What color is {thing}?", COLORS[thing]
    name, op = rng.choice(FUNC_NAMES), rng.choice(sorted(OPS))
    return kind, f"Write a Python function {name} that returns the {op} of a and b.", (
        f"def {name}(a, b):\n    return a {OPS[op]} b"
    )


def _chat(rng: random.Random) -> tuple[dict, list[tuple[str, str, str]]]:
    turns, tasks = [], []
    if rng.random() < SYSTEM_SHARE:
        turns.append({"from": "system", "value": rng.choice(SYSTEMS)})
    for _ in range(rng.choice(CHAT_TURNS)):
        kind, q, a = _task(rng)
        tasks.append((kind, q, a))
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return {"conversations": turns}, tasks


def _reply(rng: random.Random, length: str) -> str:
    target, words = LENGTH_WORDS[length], []
    while len(words) < target:
        words += rng.choice(REPLY_SENTENCES).split()
    return " ".join(words[:target]).rstrip(".,") + "."


def _roleplay(rng: random.Random, n_exchanges: int | None = None) -> dict:
    char, user = rng.choice(CHARS), rng.choice(USERS)
    turns = []
    for _ in range(n_exchanges or rng.choice(ROLEPLAY_EXCHANGES)):
        length = rng.choice(sorted(LENGTH_WORDS))
        turns += [{"from": "user", "value": rng.choice(USER_LINES)},
                  {"from": "char", "value": _reply(rng, length), "length": length}]
    return {
        "char_name": char, "user_name": user,
        "char_persona": f"{char} is a {rng.choice(TRAITS)}.",
        "user_persona": f"{user} is a traveller.",
        "scenario": f"{char} and {user} meet in {rng.choice(PLACES)}.",
        "turns": turns,
    }


def _fingerprint(record: dict) -> str:
    return hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()


def chat_records(n: int, seed: int = 0) -> Iterator[dict]:
    rng = random.Random(f"chat-{seed}")
    for _ in range(n):
        yield _chat(rng)[0]


def roleplay_records(n: int, seed: int = 0) -> Iterator[dict]:
    rng = random.Random(f"roleplay-{seed}")
    for _ in range(n):
        yield _roleplay(rng)


def held_out(n_chat: int = 240, n_roleplay: int = 80, train_chat: int = 0, train_roleplay: int = 0,
             seed: int = 0) -> list[HeldOutItem]:
    """Evaluation items whose conversations are not among the first `train_*` training records."""
    seen = {_fingerprint(r) for r in chat_records(train_chat, seed)}
    rp_prompts = set()  # a roleplay item is its prompt: the record up to a reply, and that reply's length
    for r in roleplay_records(train_roleplay, seed):
        seen.add(_fingerprint(r))
        rp_prompts |= {(_fingerprint(r | {"turns": r["turns"][:k]}), r["turns"][k]["length"])
                       for k in range(1, len(r["turns"]), 2)}
    rng = random.Random(f"held-out-{seed}")
    items: list[HeldOutItem] = []
    while len(items) < n_chat:
        rec, tasks = _chat(rng)
        if _fingerprint(rec) in seen:
            continue
        # Ask the last task, with the gold answers of the earlier turns as history.
        rec["conversations"] = rec["conversations"][:-1]
        items.append(HeldOutItem(tasks[-1][0], rec, tasks[-1][2]))
    lengths = sorted(LENGTH_WORDS)
    while len(items) < n_chat + n_roleplay:
        rec = _roleplay(rng, n_exchanges=1)
        if _fingerprint(rec) in seen:
            continue
        length = lengths[(len(items) - n_chat) % len(lengths)]
        rec["turns"] = rec["turns"][:-1]
        if (_fingerprint(rec), length) in rp_prompts:
            continue
        items.append(HeldOutItem("roleplay", rec, "", length))
    return items


DEMO_SETS = {"chat": chat_records, "roleplay": roleplay_records}


def parse_demo_path(path: str) -> tuple[str, int] | None:
    """`demo:NAME[:N]` -> (NAME, N); None for any other path."""
    if not path.startswith("demo:"):
        return None
    parts = path.split(":")
    return parts[1], int(parts[2]) if len(parts) > 2 else 1000


def write_demo(name: str, n: int, path: Path, seed: int = 0) -> Path:
    """Write a demo set as JSON lines (atomically), so it goes through the ordinary file reader."""
    if name not in DEMO_SETS:
        raise ValueError(f"unknown demo set {name!r}; choose one of {', '.join(DEMO_SETS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in DEMO_SETS[name](n, seed):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
