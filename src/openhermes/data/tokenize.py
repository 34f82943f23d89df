"""Tokenize each conversation once; labels come from character offsets, never from re-rendering.

The rendered text of a batch goes through the Rust tokenizer in one call. Each token is trained
iff the segment holding its first character is trainable. Control tokens (<|im_start|>, <|im_end|>)
come only from control segments: text inside a message that spells one is tokenized as plain text.
"""

from __future__ import annotations

import itertools
import re
from array import array
from dataclasses import dataclass, field

import numpy as np

from openhermes.formats import Conversation, Segment, get_format

IGNORE = -100
RUN_CACHE_CHARS = 4_000_000  # message text whose prompt token ids are kept (prompt_ids): a few MB at most


@dataclass
class Sample:
    input_ids: np.ndarray  # int32
    labels: np.ndarray  # int32, IGNORE where not trained
    where: str
    dataset: str
    n_trained: int = field(init=False)  # counted once on creation
    variant: str = ""  # LimaRP: the arrangement of an extra copy of the row ("" = the row itself)

    def __post_init__(self) -> None:
        self.n_trained = int(np.count_nonzero(self.labels != IGNORE))

    def __len__(self) -> int:
        return len(self.input_ids)


class ConversationTokenizer:
    """Turns conversations into (input_ids, labels) in one prompt format."""

    def __init__(self, tokenizer, prompt_format: str = "chatml", train_roles: tuple[str, ...] = ("assistant",),
                 train_on_inputs: bool = False, add_bos: bool = True):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError("openhermes needs a fast (tokenizers-backed) tokenizer for offsets")
        self.tokenizer = tokenizer
        self.backend = backend
        # A copy that reads special-token spellings as plain text, for the careful path. A copy, not a
        # toggle of `backend`, because batches are encoded on several threads at once.
        from tokenizers import Tokenizer

        self.plain_backend = Tokenizer.from_str(backend.to_str())
        self.plain_backend.encode_special_tokens = True
        self.fmt = get_format(prompt_format)
        self.train_roles = tuple(train_roles)
        self.train_on_inputs = train_on_inputs
        self.bos_id = tokenizer.bos_token_id if add_bos else None
        self.eos_token = tokenizer.eos_token
        self._runs: dict[str, array] = {}  # prompt_ids: message text -> its token ids
        self._runs_chars = 0
        # Every added token string the tokenizer would match inside text (the injection risk).
        added = sorted({t for t in tokenizer.get_added_vocab()}, key=len, reverse=True)
        self.added_re = re.compile("|".join(map(re.escape, added))) if added else None
        for tok in getattr(self.fmt, "CONTROL_TOKENS", ()):
            if tokenizer.convert_tokens_to_ids(tok) in (None, tokenizer.unk_token_id):
                raise ValueError(f"the tokenizer has no {tok!r} token; add the {prompt_format} tokens first")

    def segments(self, conv: Conversation) -> list[Segment]:
        return self.fmt.segments(conv, train_roles=self.train_roles, train_on_inputs=self.train_on_inputs)

    def _spans(self, segs: list[Segment]) -> tuple[str, list[int], list[bool], bool]:
        """The text; where "trained?" changes: (start char, trained) of each run of segments with the
        same flag (only those starts matter to the mask, and a turn has ~5 segments but 2 runs); and
        whether the message text spells a token the tokenizer would match (the injection risk)."""
        texts: list[str] = []
        plain: list[str] = []
        starts: list[int] = []
        flags: list[bool] = []
        pos = 0
        for s in segs:
            if s.kind == "text":
                text = s.text
                plain.append(text)
            else:
                text = self.eos_token if s.kind == "eos" else s.text
                plain.append("\0")  # a control token ends the run a match could span
            if not flags or s.train != flags[-1]:
                starts.append(pos)
                flags.append(s.train)
            texts.append(text)
            pos += len(text)
        injected = self.added_re is not None and self.added_re.search("".join(plain)) is not None
        return "".join(texts), starts, flags, injected

    def encode_batch(self, convs: list[Conversation]) -> list[Sample]:
        all_segs = [self.segments(c) for c in convs]
        rendered = [self._spans(segs) for segs in all_segs]
        encodings = self.backend.encode_batch([r[0] for r in rendered], add_special_tokens=False)
        head = [self.bos_id] if self.bos_id is not None else []
        out = []
        for conv, segs, (_, starts, train, injected), enc in zip(convs, all_segs, rendered, encodings, strict=True):
            if injected:
                body, body_labels = self._encode_pieces(segs)
                ids = np.asarray(head + body, dtype=np.int32)
                labels = np.asarray([IGNORE] * len(head) + body_labels, dtype=np.int32)
            else:
                ids = np.asarray(head + enc.ids, dtype=np.int32)
                labels = ids.copy()
                labels[~_train_mask(enc, starts, train, len(enc.ids), lead=len(head))] = IGNORE
            if len(labels):
                # Nothing inside a sample predicts its first token; in a packed row it must not be
                # learned from the previous sample's last position either.
                labels[0] = IGNORE
            out.append(Sample(ids, labels, conv.where, conv.dataset, variant=conv.meta.get("variant", "")))
        return out

    def prompt_ids(self, conv: Conversation, length: str | None = None) -> list[int]:
        """A generation prompt (the conversation plus the reply header), tokenized the way training
        tokenized it; control tokens only where the format puts them. `length`: LimaRP's modifier."""
        kwargs = {"length": length} if length is not None else {}
        segs = self.fmt.segments(conv, add_generation_prompt=True, **kwargs)
        ids = [self.bos_id] if self.bos_id is not None else []
        # As _encode_pieces (each run of text between control tokens on its own), without labels.
        for is_text, group in itertools.groupby(segs, key=lambda s: s.kind == "text"):
            if is_text:
                ids.extend(self._run_ids("".join(s.text for s in group)))
            else:
                ids.extend(self._control_id(s) for s in group)
        return ids

    def _control_id(self, seg: Segment) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.eos_token if seg.kind == "eos" else seg.text)

    def _run_ids(self, text: str) -> array:
        """One run of message text, special-token spellings read as plain text. Kept for the next requests: a
        chat client resends the whole conversation every turn, and its messages are the same runs again."""
        ids = self._runs.get(text)
        if ids is None:
            ids = array("i", self.plain_backend.encode(text, add_special_tokens=False).ids)
            size = self._runs_chars + len(text)
            if size > RUN_CACHE_CHARS:
                self._runs.clear()  # crude but safe with several threads: the runs in use come back at once
                size = len(text)
            self._runs_chars = size
            self._runs[text] = ids
        return ids

    def _encode_pieces(self, segs: list[Segment]) -> tuple[list[int], list[int]]:
        """The careful path, for a conversation whose text spells a control token: each run of text
        between real control tokens is encoded with special-token matching off."""
        ids: list[int] = []
        labels: list[int] = []
        for is_text, group in itertools.groupby(segs, key=lambda s: s.kind == "text"):
            if is_text:
                text, starts, train, _ = self._spans(list(group))
                enc = self.plain_backend.encode(text, add_special_tokens=False)
                mask = _train_mask(enc, starts, train, len(enc.ids))
                ids.extend(enc.ids)
                labels.extend(np.where(mask, enc.ids, IGNORE).tolist())
                continue
            for s in group:
                tid = self._control_id(s)
                ids.append(tid)
                labels.append(tid if s.train else IGNORE)
        return ids, labels


def _train_mask(enc, starts: list[int], train: list[bool], n_tokens: int, lead: int = 0) -> np.ndarray:
    """Per-token "trained?" from the character offsets: a token belongs to the run of segments holding
    its first character. Looks up one boundary token per run instead of converting every offset.
    `lead` untrained positions go first (the BOS token)."""
    bounds = []
    for s in starts:
        t = enc.char_to_token(s)
        if t is None:  # a character no token covers (a normalizer dropped it): use every offset
            offs = np.fromiter((o[0] for o in enc.offsets), dtype=np.int64, count=n_tokens)
            mask = np.asarray(train)[np.searchsorted(starts, offs, side="right") - 1]
            return np.concatenate([np.zeros(lead, dtype=bool), mask])
        bounds.append(t + 1 if enc.token_to_chars(t)[0] < s else t)  # a straddling token stays with the earlier one
    bounds.append(n_tokens)
    bounds = list(itertools.accumulate(bounds, max))
    sizes = [lead + bounds[0]] + [b - a for a, b in itertools.pairwise(bounds)]
    return np.repeat([False, *train], sizes)


def fit_length(sample: Sample, max_len: int, policy: str) -> tuple[Sample | None, str, str]:
    """Apply the over-long policy ("drop" | "truncate"): (sample or None, drop reason, detail)."""
    if len(sample) > max_len:
        if policy == "drop":
            return None, "over-long", f"{len(sample)} tokens > sequence_len {max_len}"
        sample = Sample(sample.input_ids[:max_len], sample.labels[:max_len], sample.where, sample.dataset,
                        variant=sample.variant)
    if sample.n_trained == 0:
        return None, "no trained tokens", "after truncation" if policy == "truncate" else ""
    return sample, "", ""
