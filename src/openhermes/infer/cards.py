"""SillyTavern character cards (chara_card_v2 JSON, or a PNG carrying it) -> a LimaRP roleplay header."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path

from openhermes.formats.base import Roleplay


class CardError(ValueError):
    pass


@dataclass(frozen=True)
class Card:
    name: str
    description: str
    personality: str
    scenario: str
    first_message: str

    def roleplay(self, user_name: str = "User", user_persona: str = "") -> Roleplay:
        """The LimaRP instruction block; `{{char}}`/`{{user}}` placeholders get the real names."""

        def fill(text: str) -> str:
            for key, value in (("{{char}}", self.name), ("<BOT>", self.name), ("{{user}}", user_name),
                               ("<USER>", user_name)):
                text = text.replace(key, value)
            return text.strip()

        persona = "\n".join(p for p in (self.description, self.personality) if p.strip())
        return Roleplay(self.name, user_name, fill(persona), fill(user_persona), fill(self.scenario))

    def greeting(self, user_name: str = "User") -> str:
        return self.first_message.replace("{{char}}", self.name).replace("{{user}}", user_name).strip()


def _from_json(data: dict, where: str) -> Card:
    fields = data.get("data") if data.get("spec") in ("chara_card_v2", "chara_card_v3") else data
    if not isinstance(fields, dict) or not isinstance(fields.get("name"), str) or not fields["name"].strip():
        raise CardError(f"{where}: not a character card (no 'name'; expected SillyTavern chara_card_v2 JSON)")

    def text(key: str) -> str:
        value = fields.get(key) or ""
        if not isinstance(value, str):
            raise CardError(f"{where}: '{key}' must be text, got {type(value).__name__}")
        return value

    return Card(fields["name"].strip(), text("description"), text("personality"), text("scenario"), text("first_mes"))


def load_card(path: str | Path) -> Card:
    """A card from .json, or from a .png whose `chara` text chunk holds the base64 JSON."""
    path = Path(path)
    if not path.is_file():
        raise CardError(f"{path}: no such file")
    if path.suffix.lower() == ".png":
        from PIL import Image

        try:
            with Image.open(path) as img:
                raw = img.text.get("chara") or img.text.get("ccv3")
        except Exception as e:  # Pillow raises many kinds (OSError, SyntaxError, zlib.error, ...) on a bad file
            raise CardError(f"{path}: not a readable PNG ({type(e).__name__}: {e})") from None
        if not isinstance(raw, str | bytes):
            raise CardError(f"{path}: the PNG has no 'chara' text chunk, so it carries no character card")
        try:
            text = base64.b64decode(raw, validate=False).decode("utf-8")
        except (binascii.Error, ValueError):  # not base64, not ASCII, or not UTF-8 inside
            raise CardError(f"{path}: the 'chara' chunk is not base64 UTF-8 JSON") from None
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise CardError(f"{path}: not UTF-8 text") from None
        except OSError as e:
            raise CardError(f"{path}: cannot read it ({e.strerror})") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise CardError(f"{path}: invalid JSON in the card: {e}") from None
    if not isinstance(data, dict):
        raise CardError(f"{path}: the card must be a JSON object")
    return _from_json(data, str(path))
