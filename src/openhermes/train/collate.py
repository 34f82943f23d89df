"""Batches of prepared rows for the model: no attention mask, per-sample position_ids.

With no attention mask and no KV cache, transformers' SDPA/eager attention derives the sample
boundaries from position_ids, so packed samples never attend to each other (SPEC §3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass
class PackedCollator:
    pad_id: int
    pad_to: int | None = None  # pad_to_sequence_len: every batch exactly this long

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = self.pad_to or max(len(r["input_ids"]) for r in rows)
        n = len(rows)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        position_ids = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            input_ids[i, :k] = torch.as_tensor(r["input_ids"])
            labels[i, :k] = torch.as_tensor(r["labels"])
            position_ids[i, :k] = torch.as_tensor(r["position_ids"])
            # Padding is a sample of its own (positions from 0), so no real token attends to it.
            position_ids[i, k:] = torch.arange(width - k)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
