"""VAR: next-scale prediction over a multi-scale residual VQ (Tian et al. 2024, arXiv 2404.02905).

The token maps of K scales p_1 < ... < p_K (VAR-256: 1, 2, 3, 4, 5, 6, 8, 10, 13, 16) form one
sequence of L = sum p_k^2 tokens. Scale 1's p_1^2 tokens are the start: the class embedding plus
`pos_start`; scale k > 1's are `word_embed` of the quantizer's input for that scale (the earlier
scales' f_hat, area-resized; `MultiScaleQuantizer.teacher_forcing_input`). Every token adds its
scale's level embedding and its own position embedding (`pos_1LC`). AdaLN blocks
(`blocks.adaln`) conditioned on the class embedding see the sequence under a block-causal mask (a
token attends every token of its own and the earlier scales), and an AdaLN norm and a Linear give
the logits of scale k's codes at scale k's positions. This mirrors FoundationVision/VAR
`models/var.py` (78b9539): parameter names follow its state-dict keys (`var_torch_layout` maps them).

Training: (labels, teacher-forcing input) -> logits (B, L, V). Inference: `prefill` runs scale 1
into per-block static KV caches (`init_caches`), then `decode` runs one whole scale k given its
input; each gives that scale's logits, equal to the block-causal forward's. The sampling (CFG,
top-k/p) and the quantizer's next-scale input are not the model's.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from marjax.blocks.adaln import AdaLNBeforeHead, AdaLNSelfAttention, default_std, trunc_normal
from marjax.blocks.attention import KVCache, block_causal_mask
from marjax.blocks.block_stack import init_caches as block_caches
from marjax.blocks.layers import Dtype, dense, named
from marjax.heads.softmax import SoftmaxHead
from marjax.models.common import build_preset

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


def _size(depth: int, **extra: Any) -> dict[str, Any]:
    """VAR's build_vae_var: heads = depth, width = 64 depth, drop path 0.1 depth / 24."""
    return dict(depth=depth, width=64 * depth, num_heads=depth, drop_path_rate=0.1 * depth / 24, **extra)


# The published models; init_adaln_gamma is the --alng of VAR's README training runs.
PRESETS: dict[str, dict[str, Any]] = {
    "d16": _size(16, init_adaln_gamma=1e-3),
    "d20": _size(20, init_adaln_gamma=1e-3),
    "d24": _size(24, init_adaln_gamma=1e-4),
    "d30": _size(30, init_adaln_gamma=1e-5),
    "d36-s": _size(36, init_adaln_gamma=5e-6, shared_aln=True, patch_nums=PATCH_NUMS_512),
}


class VAR(nn.Module):
    """VAR's transformer. Defaults: VAR-d16 on vae_ch160v4096z32 (V 4096, Cvae 32) at 256 px, as
    build_vae_var makes it (attn_l2_norm, no shared AdaLN, cond_drop 0.1)."""

    vocab_size: int = 4096
    code_dim: int = 32  # Cvae, the quantizer's code width
    patch_nums: tuple[int, ...] = PATCH_NUMS_256
    num_classes: int = 1000  # the class table has one more row, the null class num_classes (0: unconditional)
    width: int = 1024
    depth: int = 16
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1 * 16 / 24  # the last block's; linear from 0 at the first
    class_dropout: float = 0.1
    attn_l2_norm: bool = True
    shared_aln: bool = False
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5
    init_head: float = 0.02
    init_std: float | None = None  # None: sqrt(1 / (3 width)), VAR's init_std = -1
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None

    @property
    def seq_len(self) -> int:
        return sum(p * p for p in self.patch_nums)

    @property
    def first_len(self) -> int:
        return self.patch_nums[0] ** 2

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def scale_bounds(self, scale: int) -> tuple[int, int]:
        """[begin, end) of scale `scale`'s tokens in the sequence."""
        begin = sum(p * p for p in self.patch_nums[:scale])
        return begin, begin + self.patch_nums[scale] ** 2

    def levels(self) -> np.ndarray:
        """(L,) int32, each token's scale (VAR's lvl_1L)."""
        return np.repeat(np.arange(len(self.patch_nums), dtype=np.int32), [p * p for p in self.patch_nums])

    def setup(self):
        std = default_std(self.width) if self.init_std is None else self.init_std
        table_init = trunc_normal(default_std(self.width))  # VAR's ctor: always sqrt(1 / 3C)
        self.word_embed = dense(self.width, "word_embed", jnp.float32, True, trunc_normal(std),
                                axes=("code_dim", "embed"))
        self.class_emb = nn.Embed(self.num_classes + 1, self.width, param_dtype=jnp.float32,
                                  embedding_init=named(trunc_normal(std), "classes", "embed"))
        self.pos_start = self.param("pos_start", named(table_init, None, None, "embed"),
                                    (1, self.first_len, self.width))
        self.pos_1LC = self.param("pos_1LC", named(table_init, None, "seq", "embed"), (1, self.seq_len, self.width))
        self.lvl_embed = nn.Embed(len(self.patch_nums), self.width, param_dtype=jnp.float32,
                                  embedding_init=named(trunc_normal(std), None, "embed"))
        if self.shared_aln:
            self.shared_ada_lin = dense(6 * self.width, "shared_ada_lin", self.dtype, True, trunc_normal(std),
                                        axes=("embed", "adaln"))
        residual_factor = 1.0 / np.sqrt(2 * self.depth)
        self.blocks = [AdaLNSelfAttention(self.num_heads, self.mlp_ratio, float(rate), self.attn_l2_norm,
                                          self.shared_aln, std, residual_factor, self.init_adaln,
                                          self.init_adaln_gamma, self.dtype, self.attention_impl)
                       for rate in np.linspace(0.0, self.drop_path_rate, self.depth)]
        self.head_nm = AdaLNBeforeHead(std, self.init_adaln)
        self.head = SoftmaxHead(self.vocab_size, self.dtype, use_bias=True,
                                kernel_init=trunc_normal(std, self.init_head))

    def condition(self, labels: jax.Array, drop_label: jax.Array | None = None,
                  deterministic: bool = True) -> jax.Array:
        """labels (B,) int -> the class embedding (B, C) fp32, VAR's sos and AdaLN condition. Where
        `drop_label` (B,) bool is True the label becomes the null class; without it, training (not
        deterministic) draws the drop with probability class_dropout per sample from the "dropout" rng."""
        if drop_label is None and not deterministic and self.class_dropout > 0:
            drop_label = jax.random.uniform(self.make_rng("dropout"), labels.shape) < self.class_dropout
        if drop_label is not None:
            labels = jnp.where(drop_label, self.num_classes, labels)
        return self.class_emb(labels)

    def level_positions(self) -> jax.Array:
        """(L, C): each token's level embedding plus its position embedding."""
        return self.lvl_embed(jnp.asarray(self.levels())) + self.pos_1LC[0]

    def __call__(self, labels: jax.Array, inputs: jax.Array, drop_label: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        """Teacher-forced logits: labels (B,) int, inputs (B, L - p_1^2, code_dim) the inputs of scales
        2..K -> logits (B, L, vocab_size) fp32, logits at scale k's positions predicting scale k's codes.
        drop_label: see `condition`."""
        if inputs.shape[1:] != (self.seq_len - self.first_len, self.code_dim):
            raise ValueError(f"teacher-forcing input {inputs.shape} is not (B, {self.seq_len - self.first_len}, "
                             f"{self.code_dim})")
        cond = self.condition(labels, drop_label, deterministic)
        start = cond[:, None] + self.pos_start
        x = jnp.concatenate([start, self.word_embed(inputs.astype(jnp.float32))], axis=1) + self.level_positions()
        mask = block_causal_mask(jnp.asarray(self.levels()))
        return self._run(x, cond, deterministic, mask, None)

    def prefill(self, labels: jax.Array, caches: tuple[KVCache, ...]) -> tuple[jax.Array, tuple[KVCache, ...]]:
        """Scale 1 into empty caches: labels (B,) int, the null class (num_classes) for unconditional
        rows -> (logits (B, p_1^2, vocab_size) fp32 of scale 1's codes, caches)."""
        cond = self.condition(labels)
        x = cond[:, None] + self.pos_start + self.level_positions()[:self.first_len]
        return self._run(x, cond, True, None, caches)

    def decode(self, labels: jax.Array, inputs: jax.Array, scale: int,
               caches: tuple[KVCache, ...]) -> tuple[jax.Array, tuple[KVCache, ...]]:
        """Scale `scale` (a Python int >= 1; the caches must hold exactly the scales before it):
        labels (B,) int as in `prefill`, inputs (B, p_scale^2, code_dim) its input from the quantizer
        (`MultiScaleQuantizer.next_scale_input`) -> (logits (B, p_scale^2, vocab_size) fp32, caches)."""
        begin, end = self.scale_bounds(scale)
        x = self.word_embed(inputs.astype(jnp.float32)) + self.level_positions()[begin:end]
        return self._run(x, self.condition(labels), True, None, caches)

    def _run(self, x: jax.Array, cond: jax.Array, deterministic: bool, mask: jax.Array | None,
             caches: tuple[KVCache, ...] | None) -> jax.Array | tuple[jax.Array, tuple[KVCache, ...]]:
        """The blocks and the head: x (B, N, C) fp32, cond (B, C) -> logits (B, N, V) fp32, and the
        updated caches when caches are given."""
        block_cond = cond
        if self.shared_aln:
            block_cond = self.shared_ada_lin(nn.silu(cond)).reshape(-1, 6, self.width)
        h, updated = x.astype(self.dtype), []
        for i, block in enumerate(self.blocks):
            if caches is None:
                h = block(h, block_cond, deterministic, mask=mask)
            else:
                h, cache = block(h, block_cond, deterministic, mask=mask, cache=caches[i])
                updated.append(cache)
        logits = self.head(self.head_nm(h, cond))
        return logits if caches is None else (logits, tuple(updated))


def init_caches(model: VAR, batch_size: int, dtype: Dtype = jnp.float32) -> tuple[KVCache, ...]:
    """Empty KV caches, one per block, each (batch_size, L, heads, head_dim) in `dtype`: room for every scale."""
    return tuple(block_caches(model.depth, False, batch_size, model.seq_len, model.num_heads, model.head_dim, dtype))


def var_preset(name: str, **overrides: Any) -> VAR:
    """A VAR of a published size ("d16", "d20", "d24", "d30", "d36-s"), with field overrides."""
    return build_preset(VAR, PRESETS, name, overrides)


def init_params(model: VAR, rng: jax.Array, batch_size: int = 1) -> dict:
    """Initial params as VAR's init_weights gives them: a pytree of fp32 arrays."""
    return nn.unbox(init_boxed_params(model, rng, batch_size))


def init_boxed_params(model: VAR, rng: jax.Array, batch_size: int = 1) -> dict:
    """`init_params` with each param boxed with its logical axis names (`nn.LogicallyPartitioned`)."""
    labels = jnp.zeros((batch_size,), jnp.int32)
    inputs = jnp.zeros((batch_size, model.seq_len - model.first_len, model.code_dim), jnp.float32)
    return model.init(rng, labels, inputs)["params"]


def count_params(model: VAR) -> int:
    """Number of parameters, from shapes only (`jax.eval_shape`, nothing allocated)."""
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    return sum(int(x.size) for x in jax.tree.leaves(shapes))
