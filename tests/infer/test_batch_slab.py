"""The batch's KV buffers (Slab): rows join longer or shorter than the others, leave from the middle, and decode past
the buffers' spare room, and every row still holds exactly its own tokens' keys and values."""

import torch

from openhermes.infer.batch import HEADROOM, SPARE_ROWS, Slab, SlabLayer
from openhermes.infer.sampling import PRESETS
from openhermes.infer.sequence import GenerationRequest

HEADS, DIM, LAYERS = 2, 4, 3


def kv(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, HEADS, n, DIM, generator=g), torch.randn(1, HEADS, n, DIM, generator=g))
            for _ in range(LAYERS)]


def test_rows_keep_exactly_their_own_keys_and_values():
    slab = Slab()
    layers = [SlabLayer(slab, i) for i in range(LAYERS)]
    expected: list[list[tuple[torch.Tensor, torch.Tensor]]] = []  # per row: per layer (keys, values)
    seed = 0

    def join(n):
        nonlocal seed
        seed += 1
        new = kv(n, seed)
        assert slab.add_row(new) == len(expected)
        expected.append([(k.clone(), v.clone()) for k, v in new])

    def decode():
        nonlocal seed
        seed += 1
        slab.open_column()
        step = kv(slab.rows, seed)  # one token per row, as the model writes it
        for layer, (k, v) in zip(layers, step, strict=True):
            keys, values = layer.update(k.transpose(0, 2), v.transpose(0, 2))
            assert keys.shape == (slab.rows, HEADS, slab.width + 1, DIM)
        slab.end += 1
        for r, row in enumerate(expected):
            for i, (k, v) in enumerate(step):
                row[i] = (torch.cat([row[i][0], k[:, :, r:r + 1]], 2), torch.cat([row[i][1], v[:, :, r:r + 1]], 2))

    def leave(rows):
        nonlocal expected
        live = [r for r in range(slab.rows) if r not in rows]
        order = slab.keep(live)
        assert sorted(order) == live
        expected = [expected[r] for r in order]

    def check():
        assert slab.rows == len(expected)
        for r, row in enumerate(expected):
            got = slab.row_kv(r)
            for (k, v), (ek, ev) in zip(got, row, strict=True):
                assert torch.equal(k, ek) and torch.equal(v, ev)

    join(5)
    join(3)
    decode()
    join(40)  # longer than the batch: it widens to the left
    check()
    for n in (2, 7, 1, 12):  # more rows than the spare rows
        join(n)
    assert slab.rows > SPARE_ROWS
    check()
    for _ in range(HEADROOM + 10):  # past the spare columns on the right
        decode()
    check()
    leave([0, 3, 4])  # from the front and the middle
    check()
    longest = max(range(slab.rows), key=lambda r: expected[r][0][0].shape[2])
    leave([longest])  # the columns only it used are dropped...
    check()
    join(slab.width + 5)  # ...and a slightly longer row takes some back, in place
    check()
    join(HEADROOM * 2 + 400)  # wider than all the spare room on the left
    decode()
    leave([r for r in range(slab.rows) if r != 2])
    check()
    assert slab.width == expected[0][0][0].shape[2]  # all-padding columns were dropped
    assert not slab.padded
    # A row slot reused after its long occupant left, then a widening join in place: the new row's columns
    # on the left are padding, whatever the slot held before.
    join(slab.width + 60)
    leave([slab.rows - 1])
    join(2)
    join(slab.width + 20)
    decode()
    check()
    leave(list(range(slab.rows)))  # all gone: the buffers stay for the next rows
    assert slab.rows == 0
    join(7)
    join(30)
    decode()
    check()


def test_batched_decoding_past_the_buffers_equals_each_sequence_alone(engine):
    """Six sequences (more rows than the spare ones), one much longer joining last, 300 tokens each (past the
    spare columns): the same tokens as each one alone."""
    prompts = [engine.chat_prompt([{"role": "user", "content": "word " * n}]) for n in (1, 9, 3, 25, 5, 120)]
    reqs = [GenerationRequest(p, PRESETS["greedy"], HEADROOM + 44, ignore_eos=True) for p in prompts]
    alone = [engine.generate([r])[0].token_ids for r in reqs]
    batch = engine.new_batch()
    seqs = [engine.sequence(r) for r in reqs]
    for s in seqs[:5]:
        batch.add(s)
    for _ in range(20):
        batch.step()
    batch.add(seqs[5])
    while len(batch):
        batch.step()
    assert [s.result().token_ids for s in seqs] == alone
