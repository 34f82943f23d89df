"""Readers: ShareGPT, OpenAI messages, Alpaca and LimaRP records -> Conversation.

Each reader yields a Conversation or a RowError; a bad row never stops the others. Rows as the data
sets are released are read as they are: ShareGPT rows with extra fields (OpenHermes-2.5's `source`,
`category`, `id`, ...) and per-turn `weight`; LimaRP's one-YAML-file-per-conversation folders."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openhermes.formats import Conversation, Message, Roleplay

ROLE_NAMES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
}


@dataclass(frozen=True)
class RowError:
    source: str
    line: int
    reason: str
    detail: str = ""

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


class BadRow(ValueError):
    """A record that cannot become a conversation; `reason` is the short report key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRow("non-string turn", f"{what} is {type(value).__name__}, not a string")
    return value


def _turns(turns: Any, role_key: str, text_key: str) -> list[Message]:
    if not isinstance(turns, list):
        raise BadRow("malformed record", f"turns are {type(turns).__name__}, not a list")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise BadRow("malformed record", f"turn {i} is {type(t).__name__}, not an object")
        role = t.get(role_key)  # the usual key first: this runs for every turn of every row
        if role is None:
            role = t.get("role", t.get("from"))
        key = text_key if text_key in t else "content" if "content" in t else "value" if "value" in t else None
        if role is None or key is None:
            raise BadRow("malformed record", f"turn {i} lacks {role_key!r} or {text_key!r}")
        name = ROLE_NAMES.get(role.lower()) if isinstance(role, str) else None
        if name is None:
            raise BadRow("unknown role", f"turn {i} has role {role!r}")
        weight = t.get("weight")  # OpenHermes-2.5 rows carry it (mostly null); axolotl: 0 = not trained
        if weight is not None and not (isinstance(weight, int | float) and weight in (0, 1)):
            raise BadRow("malformed record", f"turn {i} weight is {weight!r}; use 0 (not trained), 1 or null")
        out.append(Message(name, _text(t[key], f"turn {i}"), trained=False if weight == 0 else None))
    return out


def from_sharegpt(rec: dict) -> Conversation:
    if "conversations" in rec:
        return Conversation(_turns(rec["conversations"], "from", "value"))
    if "messages" in rec:
        return from_openai(rec)
    raise BadRow("malformed record", "no 'conversations' key")


def from_openai(rec: dict) -> Conversation:
    if "messages" not in rec:
        if "conversations" in rec:
            return from_sharegpt(rec)
        raise BadRow("malformed record", "no 'messages' key")
    return Conversation(_turns(rec["messages"], "role", "content"))


def from_alpaca(rec: dict) -> Conversation:
    for key in ("instruction", "output"):
        if key not in rec:
            raise BadRow("malformed record", f"no {key!r} key")
    instruction = _text(rec["instruction"], "instruction")
    output = _text(rec["output"], "output")
    extra = rec.get("input") or None
    if extra is not None:
        extra = _text(extra, "input")
    messages = []
    if rec.get("system"):
        messages.append(Message("system", _text(rec["system"], "system")))
    messages += [Message("user", instruction, input=extra), Message("assistant", output)]
    return Conversation(messages)


def from_limarp(rec: dict) -> Conversation:
    """A LimaRP record: the released YAML shape (`personas`, `names`, `scenario`, `conversation`), or a
    flat row `{char_name, user_name, char_persona, user_persona, scenario, turns}`.

    Flat turns are `{"from": "user"|"char" (or a name), "value": ..., "length": ...}`; "char" turns
    are the character's (the assistant's)."""
    if "conversation" in rec and "names" in rec:
        return _from_limarp_release(rec)
    need = ("char_name", "user_name", "char_persona", "user_persona", "scenario", "turns")
    missing = [k for k in need if k not in rec]
    if missing:
        raise BadRow("malformed record", f"missing {', '.join(missing)}")
    rp = Roleplay(*(_text(rec[k], k) for k in need[:5]))
    if not isinstance(rec["turns"], list):
        raise BadRow("malformed record", "turns is not a list")
    messages = []
    for i, t in enumerate(rec["turns"]):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise BadRow("malformed record", f"turn {i} needs 'from' and 'value'")
        who = t["from"]
        if who in ("char", "assistant", rp.char_name):
            role = "assistant"
        elif who in ("user", "human", rp.user_name):
            role = "user"
        else:
            raise BadRow("unknown role", f"turn {i} is from {who!r}")
        length = t.get("length")
        if length is not None and not isinstance(length, str):
            raise BadRow("malformed record", f"turn {i} length is not a string")
        messages.append(Message(role, _text(t["value"], f"turn {i}"), length=length))
    return Conversation(messages, roleplay=rp)


# LimaRP's placeholders: <FIRST> is the character the model plays, <SECOND> the user.
CHAR, USER = "<FIRST>", "<SECOND>"


def _from_limarp_release(rec: dict) -> Conversation:
    """One released LimaRP YAML file. The placeholders are replaced by the real names everywhere
    (texts, personas, scenario), as LimaRP's own preparation script did; surrounding whitespace of
    each text is dropped (YAML block scalars end with a newline the prompt format does not want)."""
    names, personas = rec.get("names"), rec.get("personas")
    for key, value in (("names", names), ("personas", personas)):
        if not isinstance(value, dict):
            raise BadRow("malformed record", f"{key} is {type(value).__name__}, not a mapping")
        missing = [p for p in (CHAR, USER) if p not in value]
        if missing:
            raise BadRow("malformed record", f"{key} lacks {', '.join(missing)}")
    char, user = _text(names[CHAR], "names[<FIRST>]").strip(), _text(names[USER], "names[<SECOND>]").strip()

    def fill(value: Any, what: str) -> str:
        return _text(value, what).replace(CHAR, char).replace(USER, user).strip()

    rp = Roleplay(char, user, fill(personas[CHAR], "personas[<FIRST>]"), fill(personas[USER], "personas[<SECOND>]"),
                  fill(rec.get("scenario", ""), "scenario"))
    turns = rec["conversation"]
    if not isinstance(turns, list):
        raise BadRow("malformed record", "conversation is not a list")
    messages = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or "name" not in t or "text" not in t:
            raise BadRow("malformed record", f"conversation turn {i} needs 'name' and 'text'")
        who = t["name"]
        role = "assistant" if who in (CHAR, char) else "user" if who in (USER, user) else None
        if role is None:
            raise BadRow("unknown role", f"conversation turn {i} is by {who!r}, neither {CHAR} nor {USER}")
        messages.append(Message(role, fill(t["text"], f"conversation turn {i}")))
    return Conversation(messages, roleplay=rp)


DATA_SUFFIXES = {".json", ".jsonl", ".gz", ".parquet", ".yaml", ".yml"}
CONVERTERS = {"sharegpt": from_sharegpt, "openai": from_openai, "alpaca": from_alpaca, "limarp": from_limarp}


def _records_from_file(path: Path) -> Iterator[tuple[int, Any]]:
    """(line or row number, decoded record or BadRow) for each record in a local file."""
    name = path.name.lower()
    if name.endswith((".yaml", ".yml")):  # LimaRP: one conversation per file
        yield 1, _yaml_record(path)
        return
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch_start, batch in _parquet_batches(pq.ParquetFile(path)):
            for j, rec in enumerate(batch):
                yield batch_start + j + 1, rec
        return
    if name.endswith(".json"):
        yield from _records_from_json(path)
        return
    if name.endswith((".jsonl.gz", ".json.gz")):
        with gzip.open(path, "rb") as f:
            yield from _records_from_lines(f)
        return
    if name.endswith(".jsonl"):
        with open(path, "rb") as f:
            yield from _records_from_lines(f)
        return
    raise ValueError(f"{path}: unsupported file type (use .json, .jsonl, .jsonl.gz, .parquet or .yaml)")


def _records_from_json(path: Path) -> Iterator[tuple[int, Any]]:
    """A `.json` file: one array of records (the hub's openhermes2_5.json, 1.9 GB, is one) read a record at a
    time, so memory does not grow with the file; JSON lines under a .json name, read a line at a time; any
    other document (`{"data": [...]}`) read whole."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    body = head.lstrip()
    if body.startswith(b"["):
        yield from _json_array(path)
        return
    first_line = body.split(b"\n", 1)[0]
    if body.startswith(b"{") and _is_json(first_line) and body[len(first_line):].strip():
        with open(path, "rb") as f:  # a complete object on line 1 and more after it: JSON lines
            yield from _records_from_lines(f)
        return
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        yield 1, BadRow("invalid UTF-8", str(e))
        return
    except json.JSONDecodeError:
        yield from _records_from_lines(raw.splitlines())
        return
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        yield 1, BadRow("malformed record", "a .json file must hold a list of records")
        return
    for i, rec in enumerate(data):
        yield i + 1, rec


def _is_json(text: bytes) -> bool:
    try:
        json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _json_array(path: Path) -> Iterator[tuple[int, Any]]:
    """The records of a top-level JSON array, one at a time (ijson's C parser); numbers as Python's json
    reads them. A break in the array ends the file with one error naming the record where it broke."""
    import ijson

    n = 0
    try:
        with open(path, "rb") as f:
            for n, rec in enumerate(ijson.items(f, "item", use_float=True), start=1):
                yield n, rec
    except (ijson.JSONError, UnicodeDecodeError) as e:
        yield n + 1, BadRow("invalid JSON", f"the array breaks in record {n + 1} ({e}); the records after it are "
                                            "not read")


def _yaml_record(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        return BadRow("invalid UTF-8", f"byte {e.start}: {e.reason}")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return BadRow("invalid YAML", f"{getattr(e, 'problem', None) or e}{where}")
    except RecursionError:
        return BadRow("invalid YAML", "nested too deeply")


def _parquet_batches(pf: Any) -> Iterator[tuple[int, list[dict]]]:
    start = 0
    for batch in pf.iter_batches(batch_size=4096):
        rows = batch.to_pylist()
        yield start, rows
        start += len(rows)


def _records_from_lines(lines: Any) -> Iterator[tuple[int, Any]]:
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield lineno, BadRow("invalid UTF-8", f"byte {e.start}: {e.reason}")
            continue
        try:
            yield lineno, json.loads(text)
        except json.JSONDecodeError as e:
            yield lineno, BadRow("invalid JSON", e.msg + f" at column {e.colno}")


def _records_from_hub(path: str, split: str, name: str | None, data_files: Any) -> Iterator[tuple[int, Any]]:
    # The real loading path for a user with internet; tests use local files.
    import datasets

    ds = datasets.load_dataset(path, name, split=split, data_files=data_files)
    for i, rec in enumerate(ds):
        yield i + 1, rec


def read_records(path: str, kind: str, split: str = "train", name: str | None = None,
                 data_files: Any = None, label: str | None = None) -> Iterator[Conversation | RowError]:
    """Every record of one data set, as conversations or errors naming file and line."""
    convert = CONVERTERS[kind]
    local = Path(path)
    if local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
        records = ((str(f), n, r) for f in files for n, r in _records_from_file(f))
    elif local.exists():
        records = ((path, n, r) for n, r in _records_from_file(local))
    else:
        records = ((f"{path}[{split}]", n, r) for n, r in _records_from_hub(path, split, name, data_files))
    for source, lineno, rec in records:
        if isinstance(rec, BadRow):
            yield RowError(source, lineno, rec.reason, rec.detail)
            continue
        if not isinstance(rec, dict):
            yield RowError(source, lineno, "malformed record", f"a {type(rec).__name__}, not an object")
            continue
        try:
            conv = convert(rec)
        except BadRow as e:
            yield RowError(source, lineno, e.reason, e.detail)
            continue
        conv.source, conv.line, conv.dataset = source, lineno, label or path
        yield conv
