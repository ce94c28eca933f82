"""VQ-GPT: LlamaGen's class-conditional GPT over VQ codes (Sun et al. 2024, arXiv 2406.06525).

A Llama decoder predicts the next code of a row-major token grid. The sequence is one class token
(a row of a class table that holds a null class for classifier-free guidance) followed by the code
embeddings; 2-D RoPE (`blocks.attention.rope_2d`) rotates q and k by each token's (row, column),
and the class token's row of the table is zero, so its q and k are zero vectors: every query gives
the class key the logit 0. This mirrors FoundationVision/LlamaGen `autoregressive/models/gpt.py`
(c2i): parameter names follow its state-dict keys (`gpt_torch_layout` maps them).

Training: input [class token] + codes[:, :-1] -> logits (B, L, V), the token at grid position p
carrying p's rotation while predicting p + 1. Inference: `prefill` runs the class token at position
0 into per-layer static KV caches (`init_caches`), then `decode` feeds one code at a time; together
they give the causal forward's logits.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from marjax.blocks.attention import KVCache, Rope, causal_mask, rope_2d
from marjax.blocks.block_stack import init_caches as block_caches
from marjax.blocks.dropout import Dropout
from marjax.blocks.layers import Dtype, named
from marjax.blocks.llama import LlamaBlock, RMSNorm, normal_002, swiglu_hidden
from marjax.heads.softmax import SoftmaxHead
from marjax.models.common import build_preset

# LlamaGen's GPT sizes (`GPT_models`); all use multiple_of 256 and one K/V head per query head.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt_b": dict(width=768, depth=12, num_heads=12),
    "gpt_l": dict(width=1024, depth=24, num_heads=16),
    "gpt_xl": dict(width=1280, depth=36, num_heads=20),
    "gpt_xxl": dict(width=1536, depth=48, num_heads=24),
    "gpt_xxxl": dict(width=2560, depth=48, num_heads=40),
    "gpt_1b": dict(width=2048, depth=22, num_heads=32),
    "gpt_3b": dict(width=3200, depth=24, num_heads=32),
}


class GPT(nn.Module):
    """LlamaGen's c2i GPT. Sizes default to GPT-B on ImageNet-256 with VQ-16 codes (16x16 tokens,
    16384 codes); the other defaults are LlamaGen's `ModelArgs`."""

    vocab_size: int = 16384
    grid_size: int = 16  # tokens per side: block_size = grid_size^2
    num_classes: int = 1000  # 0: unconditional, every sample starts from the null class's row
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    num_kv_heads: int | None = None  # grouped K/V heads; None: one per query head
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    token_dropout: float = 0.1  # on the [class; codes] embeddings
    attn_dropout: float = 0.0
    resid_dropout: float = 0.1
    ffn_dropout: float = 0.1
    drop_path_rate: float = 0.0  # the last layer's; linear from 0 at the first
    class_dropout: float = 0.1  # > 0 adds the null class (index num_classes) to the table
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None

    @property
    def seq_len(self) -> int:
        return self.grid_size ** 2

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def setup(self):
        rows = self.num_classes + (self.class_dropout > 0 or not self.num_classes)  # the null class's row
        self.cls_embedding = nn.Embed(rows, self.width, dtype=self.dtype, param_dtype=jnp.float32,
                                      embedding_init=named(normal_002, "classes", "embed"))
        self.tok_embeddings = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, param_dtype=jnp.float32,
                                       embedding_init=named(normal_002, "codes", "embed"))
        self.tok_dropout = Dropout(self.token_dropout)
        hidden = swiglu_hidden(self.width, self.multiple_of, self.ffn_dim_multiplier)
        self.layers = [LlamaBlock(self.num_heads, hidden, self.num_kv_heads, self.norm_eps, self.attn_dropout,
                                  self.resid_dropout, self.ffn_dropout, float(rate), self.dtype, self.attention_impl)
                       for rate in np.linspace(0.0, self.drop_path_rate, self.depth)]
        self.norm = RMSNorm(self.norm_eps)
        self.head = SoftmaxHead(self.vocab_size, self.dtype)  # LlamaGen's `output`: no bias, zero init

    def rope(self) -> Rope:
        """(cos, sin), each (1 + seq_len, head_dim // 2): the class token's zero row, then the grid."""
        return rope_2d(self.grid_size, self.head_dim, self.rope_base)

    def class_token(self, labels: jax.Array, drop_label: jax.Array | None = None,
                    deterministic: bool = True) -> jax.Array:
        """labels (B,) int -> (B, 1, D). Where `drop_label` (B,) bool is True the label becomes the null
        class; without it, training (not deterministic) draws the drop with probability class_dropout
        per sample from the "dropout" rng, as LlamaGen's LabelEmbedder does in train mode."""
        if drop_label is None and not deterministic and self.class_dropout > 0:
            drop_label = jax.random.uniform(self.make_rng("dropout"), labels.shape) < self.class_dropout
        if drop_label is not None:
            labels = jnp.where(drop_label, self.num_classes, labels)
        return self.cls_embedding(labels)[:, None]

    def __call__(self, codes: jax.Array, labels: jax.Array, drop_label: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        """Teacher-forced next-code logits: codes (B, L) int with L <= seq_len, labels (B,) int
        -> logits (B, L, vocab_size) fp32, logits[:, p] predicting codes[:, p]. drop_label: see
        `class_token`."""
        h = jnp.concatenate([self.class_token(labels, drop_label, deterministic),
                             self.tok_embeddings(codes[:, :-1])], axis=1)
        h = self.tok_dropout(h, deterministic)
        n = h.shape[1]
        rope = tuple(table[:n] for table in self.rope())
        mask = causal_mask(n, n)
        for layer in self.layers:
            h = layer(h, None, deterministic, rope=rope, mask=mask)
        return self.head(self.norm(h))

    def prefill(self, labels: jax.Array, caches: tuple[KVCache, ...]) -> tuple[jax.Array, tuple[KVCache, ...]]:
        """The class token at position 0 into empty caches: labels (B,) int, the null class
        (num_classes) for unconditional rows -> (logits (B, vocab_size) fp32 of the first code, caches)."""
        return self._step(self.cls_embedding(labels)[:, None], 0, caches)

    def decode(self, codes: jax.Array, position: int | jax.Array,
               caches: tuple[KVCache, ...]) -> tuple[jax.Array, tuple[KVCache, ...]]:
        """One code per row at sequence `position` (the code of grid position p sits at p + 1; the
        caches must hold exactly `position` tokens): codes (B,) int -> (logits (B, vocab_size) fp32
        of the next code, caches). `position` may be traced."""
        return self._step(self.tok_embeddings(codes)[:, None], position, caches)

    def _step(self, h: jax.Array, position: int | jax.Array,
              caches: tuple[KVCache, ...]) -> tuple[jax.Array, tuple[KVCache, ...]]:
        rope = tuple(jax.lax.dynamic_slice_in_dim(table, position, 1) for table in self.rope())
        updated = []
        for layer, cache in zip(self.layers, caches, strict=True):
            h, cache = layer(h, rope=rope, cache=cache)
            updated.append(cache)
        return self.head(self.norm(h))[:, 0], tuple(updated)


def init_caches(model: GPT, batch_size: int, dtype: Dtype = jnp.float32, chunks: int = 1) -> tuple[KVCache, ...]:
    """Empty KV caches, one per layer, of batch_size rows in `dtype` (LlamaGen: the weights' dtype)
    with room for the class token and every code, 1 + seq_len positions, in `chunks` chunks (`KVCache`)."""
    kv_heads = model.num_kv_heads or model.num_heads
    return tuple(block_caches(model.depth, False, batch_size, 1 + model.seq_len, kv_heads, model.head_dim, dtype,
                              chunks))


def gpt_preset(name: str, **overrides: Any) -> GPT:
    """A GPT of a published size ("gpt_b", ..., "gpt_3b"), with field overrides."""
    return build_preset(GPT, PRESETS, name, overrides)


def init_params(model: GPT, rng: jax.Array, batch_size: int = 1) -> dict:
    """Initial params of `model` as LlamaGen initialises them (every Linear and Embedding normal(0, 0.02),
    the output Linear zero, RMSNorm weights 1): a pytree of fp32 arrays."""
    return nn.unbox(init_boxed_params(model, rng, batch_size))


def init_boxed_params(model: GPT, rng: jax.Array, batch_size: int = 1) -> dict:
    """`init_params` with each param boxed with its logical axis names (`nn.LogicallyPartitioned`)."""
    codes = jnp.zeros((batch_size, model.seq_len), jnp.int32)
    return model.init(rng, codes, jnp.zeros((batch_size,), jnp.int32))["params"]


def count_params(model: GPT) -> int:
    """Number of parameters, from shapes only (`jax.eval_shape`, nothing allocated)."""
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    return sum(int(x.size) for x in jax.tree.leaves(shapes))
