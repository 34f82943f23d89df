import math

import torch

from openhermes.train.neftune import PackedNEFTune, noise_scale, sample_lengths


def test_sample_lengths_from_position_ids():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert sample_lengths(pos).tolist() == [[3, 3, 3, 2, 2, 4, 4, 4, 4]]


def test_noise_scale_uses_each_samples_own_length_not_the_row():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    scale = noise_scale(pos, alpha=5.0, dim=16)
    expected = [5 / math.sqrt(n * 16) for n in (3, 3, 3, 2, 2, 4, 4, 4, 4)]
    torch.testing.assert_close(scale[0], torch.tensor(expected))
    assert not torch.allclose(scale, torch.full_like(scale, 5 / math.sqrt(9 * 16)))  # transformers#34659


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4096)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids, position_ids=None):
        return self.emb(input_ids)


def test_hook_adds_bounded_noise_in_training_only():
    torch.manual_seed(0)
    m = _Tiny()
    PackedNEFTune(m, alpha=5.0)
    ids = torch.zeros(1, 5, dtype=torch.long)
    pos = torch.tensor([[0, 1, 0, 1, 2]])
    clean = m.emb.weight[0]
    m.train()
    diff = (m(ids, position_ids=pos) - clean).abs()
    bounds = torch.tensor([5 / math.sqrt(n * 4096) for n in (2, 2, 3, 3, 3)])
    assert (diff.amax(-1)[0] <= bounds + 1e-6).all() and (diff.amax(-1)[0] > 0.95 * bounds).all()
    m.eval()
    assert torch.equal(m(ids, position_ids=pos)[0, 0], clean)
