"""What a prefill and a decode step cost, in one process: the figures behind the serving design.

1. Prefill of 300 / 1,000 / 2,000 prompt tokens on the model (what prefix reuse saves).
2. One decode step of 8 rows of 1,500 tokens: our batch (the Slab, written in place, and the fast decode step of
   infer/fast_decode.py where the model allows it) against the model's own forward on the same Slab, and against
   the same rows in transformers' DynamicCache (grown by torch.cat), with the share of the step that torch.cat takes.
3. Prefills into the batch with the fast forward against the model's forward, interleaved: a new 1,000-token prompt
   alone, and 8 next turns together (30 new tokens each after 1,500 tokens found in the prefix cache).
4. With --gguf FILE, or --wider (an f16 GGUF of serve_load.py's ~160M random Mistral-shaped model): one llama.cpp
   decode step of 1 row and of 8 rows through the llama.cpp engine's slots.

    python benchmarks/decode_costs.py [--model runs/tiny/model] [--gguf model-f16.gguf | --wider] [--repeats 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import cpu_model_and_flags, embedded_model_folder, wider_model_folder
from torch.profiler import ProfilerActivity, profile
from transformers import DynamicCache

from openhermes.infer.batch import Batch, Costs
from openhermes.infer.engine import Engine
from openhermes.infer.prefix_cache import PrefixCache
from openhermes.infer.sampling import PRESETS
from openhermes.infer.sequence import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]


def best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def prompt(vocab: int, n: int, seed: int) -> list[int]:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.inference_mode()
def torch_costs(engine: Engine, repeats: int) -> None:
    model, vocab = engine.model, engine.vocab_size
    for n in (300, 1000, 2000):
        ids = torch.tensor([prompt(vocab, n, 0)])
        ms = best_ms(lambda ids=ids: model(input_ids=ids, logits_to_keep=1), max(3, repeats // 5))
        print(f"prefill {n:5} tokens: {ms:7.1f} ms")
    rows = [prompt(vocab, 1500, r) for r in range(8)]
    batch = engine.new_batch()
    for ids in rows:
        batch.add(engine.sequence(GenerationRequest(ids, PRESETS["greedy"], 10_000, ignore_eos=True)))
    fast = batch.fast  # the fast decode step (infer/fast_decode.py) where the model allows it
    ours, slab_forward = [], []
    for _ in range(5):  # interleaved: the machine's speed drifts
        batch.fast = fast
        ours.append(best_ms(batch.step, repeats))
        batch.fast = None
        slab_forward.append(best_ms(batch.step, repeats))
    ours, slab_forward = min(ours), min(slab_forward)
    batch.fast = fast
    cache = DynamicCache()
    model(input_ids=torch.tensor(rows), past_key_values=cache, use_cache=True, logits_to_keep=1)
    last = torch.tensor([[5]] * 8)

    def dynamic_step():
        model(input_ids=last, past_key_values=cache, use_cache=True)

    theirs = best_ms(dynamic_step, repeats)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            dynamic_step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    cat = sum(e.self_cpu_time_total for e in events if e.key == "aten::cat")
    print(f"decode step, 8 rows x 1,500 tokens: ours (Slab, {'fast step' if fast else 'model forward'}) {ours:.1f} ms; "
          f"the model's forward on the Slab {slab_forward:.1f} ms -> {slab_forward / ours:.2f}x; "
          f"DynamicCache {theirs:.1f} ms, torch.cat {100 * cat / total:.0f}% of its CPU time -> {theirs / ours:.2f}x")


@torch.inference_mode()
def prefill_costs(engine: Engine, repeats: int) -> None:
    model, vocab = engine.model, engine.vocab_size
    if Batch(model).fast is None:
        print("prefill into the batch: the model's forward only (no fast forward for this model)")
        return
    cache = PrefixCache(256)
    histories = [prompt(vocab, 1500, 10 + r) for r in range(8)]
    Batch(model, cache).add_many([engine.sequence(GenerationRequest(h, PRESETS["greedy"], 1)) for h in histories])
    cases = {"a new 1,000-token prompt": (None, [prompt(vocab, 1000, 1)]),
             "8 next turns of 30 tokens after 1,500 cached": (cache, [h + prompt(vocab, 30, 20 + r)
                                                                      for r, h in enumerate(histories)])}
    for label, (prefixes, prompts) in cases.items():
        def add(fast: bool, prefixes=prefixes, prompts=prompts) -> None:
            batch = Batch(model, prefixes)
            if not fast:
                batch.fast = None
            batch.costs = Costs()  # costs not yet known: the next turns share one forward
            batch.add_many([engine.sequence(GenerationRequest(p, PRESETS["greedy"], 1)) for p in prompts])

        ours, own = [], []
        for _ in range(5):  # interleaved: the machine's speed drifts
            ours.append(best_ms(lambda: add(True), max(3, repeats // 4)))
            own.append(best_ms(lambda: add(False), max(3, repeats // 4)))
        print(f"prefill into the batch, {label}: fast forward {min(ours):.1f} ms, the model's forward "
              f"{min(own):.1f} ms -> {min(own) / min(ours):.2f}x")


def llamacpp_costs(gguf: Path, repeats: int) -> None:
    from openhermes.infer.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(gguf, parallel=8)
    slots = engine.slots
    taken = []
    for s in range(8):
        ids = prompt(engine.vocab_size, 30, s)
        slot, _ = slots.acquire(ids)
        slots.forward([(slot, ids, True)])
        taken.append(slot)
    one = best_ms(lambda: slots.forward([(taken[0], [5], True)]), repeats)
    eight = best_ms(lambda: slots.forward([(s, [5], True) for s in taken]), repeats)
    print(f"llama.cpp decode step ({gguf.name}): 1 row {one:.1f} ms, 8 rows {eight:.1f} ms "
          f"-> {8 * one / eight:.2f}x the tokens per second")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "runs" / "tiny" / "model")
    ap.add_argument("--gguf", type=Path, help="a GGUF file for the llama.cpp step (e.g. an `openhermes export`)")
    ap.add_argument("--wider", action="store_true", help="the llama.cpp step on a ~160M random model's GGUF")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    name, flags = cpu_model_and_flags()
    print(f"CPU: {name} ({' '.join(flags)}), {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        folder = embedded_model_folder(args.model, Path(tmp))
        print(f"model {folder}")
        engine = Engine.load(folder, device="cpu", prefix_cache_mb=0)
        torch_costs(engine, args.repeats)
        prefill_costs(engine, args.repeats)
        gguf = args.gguf
        if args.wider:
            from openhermes.export.gguf import export_gguf

            wider = wider_model_folder(folder, Path(tmp) / "wider", hidden=1024, layers=12)
            gguf = export_gguf(wider, Path(tmp) / "wider-f16.gguf", "f16", progress=False)
        if gguf is not None:
            llamacpp_costs(gguf, args.repeats)


if __name__ == "__main__":
    main()
