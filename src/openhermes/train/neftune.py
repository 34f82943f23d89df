"""NEFTune with packing: noise of +-alpha/sqrt(L*d) where L is each packed sample's own length.

Written here because transformers' NEFTune hook uses the packed row's length (transformers#34659)."""

from __future__ import annotations

import math

import torch


def sample_lengths(position_ids: torch.Tensor) -> torch.Tensor:
    """For every token, the length of the packed sample it belongs to (samples restart at position 0)."""
    starts = (position_ids == 0).long()
    starts[:, 0] = 1
    seg = starts.cumsum(-1) - 1  # sample index of each token within its row
    counts = torch.zeros_like(seg).scatter_add_(1, seg, torch.ones_like(seg))
    return counts.gather(1, seg)


def noise_scale(position_ids: torch.Tensor, alpha: float, dim: int) -> torch.Tensor:
    """Per-token noise magnitude alpha / sqrt(L_sample * d), shape (batch, seq)."""
    return alpha / torch.sqrt(sample_lengths(position_ids).float() * dim)


class PackedNEFTune:
    def __init__(self, model: torch.nn.Module, alpha: float):
        self.alpha = alpha
        self._position_ids: torch.Tensor | None = None
        self._handles = [
            model.register_forward_pre_hook(self._grab, with_kwargs=True),
            model.get_input_embeddings().register_forward_hook(self._noise),
        ]

    def _grab(self, module, args, kwargs):
        self._position_ids = kwargs.get("position_ids")

    def _noise(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        b, t, d = output.shape
        if self._position_ids is None or self._position_ids.shape[-1] != t:
            scale = torch.full((b, t), self.alpha / math.sqrt(t * d), device=output.device)
        else:
            scale = noise_scale(self._position_ids.expand(b, t), self.alpha, d).to(output.device)
        noise = torch.empty_like(output).uniform_(-1, 1)
        return output + noise * scale.unsqueeze(-1).to(output.dtype)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
