"""A forward for small Llama/Mistral models on a CPU, as a few fused tensor operations: the batch's decode steps,
and its prefills into the batch's own buffers (a next turn after a reused prefix, a new prompt).

Our own forward, because on a small model transformers' module-per-operation forward costs more than the
arithmetic: its decode step is ~60 Python-level operations a layer, and the embedded default's whole step (8 rows
of 1,500 tokens) takes 4.5 ms with it against 3.1 ms with this one (benchmarks/decode_costs.py, AVX2). A prefill's last
layer also computes its queries and MLP for the last token alone (only its logits are wanted). It is used only
where it computes exactly what the model's own forward does (tests/infer/test_fast_decode.py compares every
step's and prefill's logits and KV): Mistral/Llama layers of plain `nn.Linear`s without bias, SiLU, RMSNorm, the
model's own rotary module (so every rope scaling type is the model's), fp32 on a CPU, and a mask the batch made
itself. Anything else (a GPU, bf16, a quantized or adapted layer, another architecture) takes the model's forward.

The query, key and value weights (and gate and up) are joined into one matrix per layer, one matmul each; the
copies are made only for models whose joined weights take at most FUSED_BYTES, kept per model, and made again
for the next batch if a weight changed (an engine can sample from a model that is still training).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

FUSED_BYTES = 256 * 2**20
# model -> (each weight with its version and address, the joined weights)
_FUSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class FastDecode:
    def __init__(self, model) -> None:
        self.model = model
        inner = model.model
        config = model.config
        first = inner.layers[0].self_attn
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = first.head_dim
        self.scaling = first.scaling
        self.hidden = config.hidden_size
        self.intermediate = config.intermediate_size
        self.rotary = inner.rotary_emb
        self.embed = inner.embed_tokens.weight
        self.norm, self.norm_eps = inner.norm.weight, inner.norm.variance_epsilon
        self.head = model.get_output_embeddings().weight
        self.layers = self._joined()  # per batch: a model that changes is seen by its next batch

    @classmethod
    def for_model(cls, model) -> FastDecode | None:
        """A fast decode step for this model, or None where the model's own forward must run."""
        from transformers import LlamaForCausalLM, MistralForCausalLM

        if type(model) not in (LlamaForCausalLM, MistralForCausalLM):
            return None
        config = model.config
        weight = model.get_input_embeddings().weight
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            return None
        if (config.hidden_act != "silu" or getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)
                or getattr(config, "_attn_implementation", "sdpa") not in ("sdpa", "eager")):
            return None
        fused = 0
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            joined = (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj)
            if any(type(lin) is not nn.Linear or lin.bias is not None or lin.weight.dtype != torch.float32
                   for lin in (*joined, a.o_proj, m.down_proj)):
                return None
            fused += sum(lin.weight.numel() for lin in joined) * 4  # fp32 bytes of the joined copies
        head = model.get_output_embeddings()
        if type(head) is not nn.Linear or head.bias is not None or fused > FUSED_BYTES:
            return None
        return cls(model)

    def _joined(self) -> list[tuple]:
        """Per layer: input norm, joined q/k/v, o, post norm, joined gate/up, down. Kept per model (every batch of
        an engine shares them) and made again when a weight changed or was replaced."""
        sources = [(p, p._version, p.data_ptr()) for p in self.model.parameters()]
        known = _FUSED.get(self.model)
        if known is not None and len(known[0]) == len(sources) and all(
                a[0] is b[0] and a[1:] == b[1:] for a, b in zip(sources, known[0], strict=True)):
            return known[1]
        layers = []
        for layer in self.model.model.layers:
            a, m = layer.self_attn, layer.mlp
            layers.append((
                layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
                torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), a.o_proj.weight,
                layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
                torch.cat([m.gate_proj.weight, m.up_proj.weight]), m.down_proj.weight))
        _FUSED[self.model] = (sources, layers)
        return layers

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, slab) -> torch.Tensor:
        """One token for each of the slab's rows: `ids` and `positions` (rows,), `mask` the step's 4D additive mask
        over columns [start, end] or None; writes the tokens' keys and values at column `end`. Returns the logits."""
        return self.forward(ids[:, None], positions[:, None], mask, slab)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, slab) -> torch.Tensor:
        """`n` new tokens for each of the slab's rows (a decode step: n = 1; a prefill after a cached prefix: more):
        `ids` and `positions` (rows, n); `mask` the 4D additive mask (rows, 1, n, columns [start, end + n)), or None
        where there is no padding and, for n > 1, no column before the new tokens (attention then causal over them
        alone). Writes their keys and values at columns [end, end + n). Returns the logits of each row's last token
        (rows, vocab): the last layer computes its queries and MLP for that token alone."""
        rows, n = ids.shape
        end, start = slab.end, slab.start
        heads, kv, dim = self.heads, self.kv_heads, self.head_dim
        embed = self.embed
        cos, sin = (t[:, :, None] for t in self.rotary(embed[:1], positions))  # (rows, n, 1, dim): both halves
        qk_width = (heads + kv) * dim
        h = embed[ids]
        last = len(self.layers) - 1
        for i, (in_norm, in_eps, qkv_w, o_w, post_norm, post_eps, gate_up_w, down_w) in enumerate(self.layers):
            x = F.rms_norm(h, (self.hidden,), eps=in_eps) * in_norm
            qkv = F.linear(x, qkv_w)
            qk = qkv[..., :qk_width].view(rows, n, heads + kv, dim)
            qk = qk * cos + _rotate_half(qk) * sin  # queries and keys rotated together
            keys, values = slab.keys[i], slab.values[i]
            keys[:rows, :, end:end + n] = qk[:, :, heads:].transpose(1, 2)
            values[:rows, :, end:end + n] = qkv[..., qk_width:].view(rows, n, kv, dim).transpose(1, 2)
            k, v = keys[:rows, :, start:end + n], values[:rows, :, start:end + n]
            if i == last and n > 1:  # only the last token's logits are wanted: its query alone from here on
                qk, h, n = qk[:, -1:], h[:, -1:], 1
                mask = mask[:, :, -1:] if mask is not None else None
            if n == 1:  # each key/value head's queries as its rows (transformers' GQA packing): no repeated keys
                out = F.scaled_dot_product_attention(qk[:, 0, :heads].reshape(rows, kv, heads // kv, dim), k, v,
                                                     attn_mask=mask, scale=self.scaling)
            else:  # SDPA's causal kernel where no mask is needed (a whole prompt): faster than a mask of its own
                out = F.scaled_dot_product_attention(qk[:, :, :heads].transpose(1, 2), k, v, attn_mask=mask,
                                                     is_causal=mask is None, scale=self.scaling,
                                                     enable_gqa=True).transpose(1, 2)
            h = h + F.linear(out.reshape(rows, n, heads * dim), o_w)
            x = F.rms_norm(h, (self.hidden,), eps=post_eps) * post_norm
            gate_up = F.linear(x, gate_up_w)
            h = h + F.linear(F.silu(gate_up[..., :self.intermediate]) * gate_up[..., self.intermediate:], down_w)
        return F.linear(F.rms_norm(h[:, -1], (self.hidden,), eps=self.norm_eps) * self.norm, self.head)
