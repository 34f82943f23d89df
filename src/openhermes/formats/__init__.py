"""Prompt formats: pure text in, segments (text + "train this?" flag) out. No torch, no tokenizer."""

from openhermes.formats.base import Conversation, Message, Roleplay, Segment, segments_text
from openhermes.formats.registry import FORMATS, get_format

__all__ = ["Conversation", "Message", "Roleplay", "Segment", "segments_text", "FORMATS", "get_format"]
