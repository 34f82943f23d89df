"""Logits only at the positions whose next token is trained.

With `train_on_inputs: false` most positions of a packed row are prompt (the embedded default trains on 18% of
its tokens), yet a causal LM's forward multiplies every position by the output head and the loss takes a
log-softmax over the whole vocabulary at each. The loss is the same computed from the trained positions alone:
a forward pre-hook on the output head hands it only those rows, and the kept labels go to transformers' own loss
as `shift_labels` (its reduction and `num_items_in_batch` scaling unchanged). transformers has no CPU path for
this (Liger's fused linear cross-entropy is a Triton kernel), hence this small hook.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

IGNORE = -100


class TrainedPositionsHead:
    """While `only(keep)` is active, the model's output head computes logits for the rows `keep` marks."""

    def __init__(self, model: torch.nn.Module):
        self.keep: torch.Tensor | None = None
        self.handle = model.get_output_embeddings().register_forward_pre_hook(self._select)

    def _select(self, module, args):
        if self.keep is None:
            return None
        return (args[0][self.keep], *args[1:])

    @contextmanager
    def only(self, keep: torch.Tensor) -> Iterator[None]:
        self.keep = keep
        try:
            yield
        finally:
            self.keep = None

    def remove(self) -> None:
        self.handle.remove()


def next_token_labels(labels: torch.Tensor) -> torch.Tensor:
    """The label each position predicts (the next token's), IGNORE at each row's end: as transformers shifts."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE)
