"""The causal AR baselines of the MAR paper (Li et al. 2024, Table 1): next-token prediction.

One GPT-like stack of MAR's ViT blocks under a causal mask, as deep as MAR's encoder and decoder
together and without the MAE encoder (LTH14/mar issue #34), runs over N rows:
    row 0: [cls]        row i (1 <= i < N): the token generated at step i - 1
so row i's output z_i conditions the token generated at step i (the input shifted right by one).
The generation order is an input, `orders` (B, N): per sample a permutation of the grid positions
0..N-1, orders[b, i] the position generated at step i (raster: `masking.raster_orders`). Every z
and every loss term is in generation order.

Row i's input: the token (`z_proj` of a continuous token, or the embedding of a code) or, at row 0,
the class embedding (`fake_latent` where the label is dropped, for CFG); plus the learned position
embedding of where that token sits (row 0 of the table for [cls], row 1 + p for position p); with
`order="random"` plus a learned embedding of the target position orders[:, i], the position row i
predicts; then a LayerNorm (MAR's z_proj_ln).

Where the target position enters (the paper, Sec. 3.4, says only that position embeddings of the
positions to predict are added to the decoder, as in MAE): once, at the stack's input, as MAR adds
its decoder's position embeddings once at the decoder's input; the residual stream carries it to
every layer. Row i's input is then complete (token i - 1, target i) when row i is computed, so
cached decoding stays one row per step. A raster model has no such table: its target is always
the next position.

Heads: "diffloss", MAR's DiffLoss MLP on continuous tokens (token_dim = patch-flattened latent
channels), the loss on every position, each token tiled diffusion_batch_mul times; "softmax", logits
over a codebook with cross-entropy on every position, integer codes as input.

Cached decoding: `prefill` writes row 0 into static per-layer KV caches (`init_decode_caches`) and
returns z_0; `decode_step` writes the token generated at `step` as row step + 1 and returns
z_{step + 1}. Both give the numbers of `condition`, the full causal forward, up to float rounding.
"""
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from marjax.blocks.attention import KVCache, causal_mask
from marjax.blocks.block_stack import init_caches, make_blocks, run_blocks
from marjax.blocks.layers import Dtype, dense, layer_norm, named, xavier_uniform
from marjax.blocks.transformer import Block
from marjax.heads.diffloss import DiffLoss
from marjax.heads.softmax import SoftmaxHead, token_cross_entropy
from marjax.models.common import PatchTokenGrid, build_preset
from marjax.models.masking import raster_orders

normal_002 = nn.initializers.normal(0.02)

ORDERS = ("raster", "random")
HEADS = ("diffloss", "softmax")
BLOCK_GROUPS = ("blocks",)  # with `scan_layers`, one stacked entry (`block_stack`)

# MAR's published widths, heads and DiffLoss MLPs; depth = MAR's encoder + decoder depth.
PRESETS: dict[str, dict[str, Any]] = {
    "ar_base": dict(width=768, depth=24, num_heads=12, diffloss_depth=6, diffloss_width=1024),
    "ar_large": dict(width=1024, depth=32, num_heads=16, diffloss_depth=8, diffloss_width=1280),
    "ar_huge": dict(width=1280, depth=40, num_heads=16, diffloss_depth=12, diffloss_width=1536),
}


def in_order(tokens: jax.Array, orders: jax.Array) -> jax.Array:
    """Tokens (B, N, ...) in grid order -> the same in generation order: out[b, i] = tokens[b, orders[b, i]]."""
    index = orders.reshape(orders.shape + (1,) * (tokens.ndim - 2))
    return jnp.take_along_axis(tokens, index, axis=1)


class AR(PatchTokenGrid, nn.Module):
    """The causal baseline. Sizes default to MAR-L's transformer doubled into one stack (32 blocks,
    width 1024) with the ablations' 3 x 1024 DiffLoss MLP, on 16x16 KL-16 latents."""

    latent_size: int = 16
    latent_channels: int = 16
    patch_size: int = 1
    width: int = 1024
    depth: int = 32
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    order: str = "raster"  # "random" adds the target-position embedding
    head: str = "diffloss"  # "diffloss" (continuous tokens) or "softmax" (codes)
    vocab_size: int = 16384  # the softmax head's codebook (LDM's VQ-16)
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    diffloss_depth: int = 3
    diffloss_width: int = 1024
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    remat: str = "none"  # a key of block_stack.REMAT_POLICIES
    scan_layers: bool = False  # blocks as one nn.scan over stacked params (see block_stack)

    def setup(self):
        if self.order not in ORDERS or self.head not in HEADS:
            raise ValueError(f"AR order {self.order!r} / head {self.head!r}: choose an order of {ORDERS} "
                             f"and a head of {HEADS}")
        width, seq_len = self.width, self.seq_len
        if self.num_classes:  # 0: unconditional, every [cls] row is `fake_latent`
            self.class_emb = nn.Embed(self.num_classes, width, embedding_init=named(normal_002, "classes", "embed"))
        self.fake_latent = self.param("fake_latent", named(normal_002, None, "embed"), (1, width))
        if self.head == "diffloss":
            self.z_proj = dense(width, "z_proj", self.dtype, axes=("token", "embed"))
            self.diffloss = DiffLoss(self.token_dim, self.diffloss_width, self.diffloss_depth, self.dtype)
        else:
            self.code_emb = nn.Embed(self.vocab_size, width, self.dtype,
                                     embedding_init=named(normal_002, "codes", "embed"))
            # A Linear like every other of MAR's: xavier-uniform kernel, zero bias.
            self.softmax = SoftmaxHead(self.vocab_size, self.dtype, use_bias=True, kernel_init=xavier_uniform)
        self.z_proj_ln = layer_norm("z_proj_ln", self.dtype)
        position_init = named(normal_002, None, "seq", "embed")
        self.pos_embed_learned = self.param("pos_embed_learned", position_init, (1, 1 + seq_len, width))
        if self.order == "random":
            self.target_pos_embed_learned = self.param("target_pos_embed_learned", position_init,
                                                       (1, seq_len, width))
        self.blocks = make_blocks(lambda name: Block(self.num_heads, self.mlp_ratio, self.attn_dropout,
                                                     self.proj_dropout, self.dtype, self.attention_impl, name=name),
                                  "blocks", self.depth, self.scan_layers)
        self.norm = layer_norm("norm", self.dtype)

    def class_embedding(self, labels: jax.Array, drop_label: jax.Array) -> jax.Array:
        """labels (B,) int, drop_label (B,) bool -> (B, 1, D): the [cls] row, `fake_latent` where dropped
        (everywhere for an unconditional model)."""
        if not self.num_classes:
            return jnp.broadcast_to(self.fake_latent, (labels.shape[0], 1, self.width)).astype(self.dtype)
        return jnp.where(drop_label[:, None], self.fake_latent, self.class_emb(labels))[:, None].astype(self.dtype)

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        """(B, n, token_dim) float tokens (diffloss) or (B, n) int codes (softmax) -> (B, n, D)."""
        return self.z_proj(tokens) if self.head == "diffloss" else self.code_emb(tokens)

    def _stack_input(self, x: jax.Array, positions: jax.Array, targets: jax.Array) -> jax.Array:
        """x (B, n, D) embedded rows; positions (B, n) int, their rows of the position table (0: [cls],
        1 + p: a token at grid position p); targets (B, n) int, the grid positions they predict."""
        x = x + jnp.take(self.pos_embed_learned[0], positions, axis=0)
        if self.order == "random":
            x = x + jnp.take(self.target_pos_embed_learned[0], targets, axis=0)
        return self.z_proj_ln(x)

    def condition(self, tokens: jax.Array, labels: jax.Array, orders: jax.Array, drop_label: jax.Array,
                  deterministic: bool = True, batch_sharding: jax.sharding.Sharding | None = None) -> jax.Array:
        """The full causal forward (teacher forcing).

        Args:
          tokens: (B, N, token_dim) float (diffloss) or (B, N) int codes (softmax), in grid order.
          labels: (B,) int. orders: (B, N) int permutations. drop_label: (B,) bool, [cls] = `fake_latent`.
          batch_sharding: the mesh's batch sharding, kept by the blocks' inputs; None on one device.
        Returns:
          z: (B, N, D) in generation order, z[:, i] the condition of the token at orders[:, i].
        """
        b, seq_len = orders.shape
        x = jnp.concatenate([self.class_embedding(labels, drop_label),
                             self.embed_tokens(in_order(tokens, orders)[:, :-1])], axis=1)
        positions = jnp.concatenate([jnp.zeros((b, 1), orders.dtype), 1 + orders[:, :-1]], axis=1)
        x = self._stack_input(x, positions, orders)
        x = run_blocks(self.blocks, x, None, deterministic, self.remat, self.depth, batch_sharding,
                       mask=causal_mask(seq_len, seq_len))
        return self.norm(x)

    def _decode_row(self, x: jax.Array, position: jax.Array, target: jax.Array,
                    caches: list[KVCache] | KVCache) -> tuple[jax.Array, list[KVCache] | KVCache]:
        """One embedded row x (B, 1, D) at the caches' next position -> (z (B, D), updated caches)."""
        x = self._stack_input(x, position, target)
        x, caches = run_blocks(self.blocks, x, None, True, self.remat, self.depth, caches=caches)
        return self.norm(x)[:, 0], caches

    def prefill(self, labels: jax.Array, drop_label: jax.Array, orders: jax.Array,
                caches: list[KVCache] | KVCache) -> tuple[jax.Array, list[KVCache] | KVCache]:
        """Row 0 ([cls]) into empty caches (`init_decode_caches`): labels, drop_label (B,), orders (B, N)
        -> (z_0 (B, D), the condition of the token at orders[:, 0]; the caches)."""
        position = jnp.zeros((orders.shape[0], 1), orders.dtype)
        return self._decode_row(self.class_embedding(labels, drop_label), position, orders[:, :1], caches)

    def decode_step(self, token: jax.Array, step: jax.Array | int, orders: jax.Array,
                    caches: list[KVCache] | KVCache) -> tuple[jax.Array, list[KVCache] | KVCache]:
        """The token generated at `step` as row step + 1 of the caches (filled up to row step).

        token: (B, token_dim) float or (B,) int code, at grid position orders[:, step]; step: int
        scalar in 0..N-2, may be traced. Returns (z_{step + 1} (B, D), the condition of the token at
        orders[:, step + 1]; the caches).
        """
        position = 1 + jax.lax.dynamic_slice_in_dim(orders, step, 1, axis=1)
        target = jax.lax.dynamic_slice_in_dim(orders, step + 1, 1, axis=1)
        return self._decode_row(self.embed_tokens(token[:, None]), position, target, caches)

    def logits(self, z: jax.Array) -> jax.Array:
        """The softmax head: z (..., D) -> (..., vocab_size) float32."""
        return self.softmax(z)

    def sample_tokens(self, z: jax.Array, noise_fn: Callable[[int | jax.Array], jax.Array],
                      temperature: jax.Array, cfg_scale: jax.Array | None, num_diffusion_steps: int | str,
                      clip_denoised: float = 0.0) -> jax.Array:
        """The DiffLoss head: tokens (N, token_dim) for conditions z (N, D), or (2N, D) = [cond; uncond]
        with guidance (`DiffLoss.sample`)."""
        return self.diffloss.sample(z, noise_fn, temperature, cfg_scale, num_diffusion_steps, clip_denoised)

    def __call__(self, tokens: jax.Array, labels: jax.Array, orders: jax.Array, drop_label: jax.Array,
                 t: jax.Array | None = None, noise: jax.Array | None = None, deterministic: bool = True,
                 batch_sharding: jax.sharding.Sharding | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The training loss on every position, with all randomness given.

        Args:
          tokens, labels, orders, drop_label: as `condition`.
          t: (B*N*mul,) timesteps in 0..999 and noise: (B*N*mul, token_dim), the DiffLoss head's,
            rows ordered (sample, generation step, copy) with mul = diffusion_batch_mul copies of
            each token; None with the softmax head.
        Returns:
          (loss, terms): the mean over rows of terms["loss"]; terms per row in generation order:
          diffloss "mse", "vb", "loss" (B*N*mul,); softmax "loss" (B*N,), the cross-entropy.
        """
        z = self.condition(tokens, labels, orders, drop_label, deterministic, batch_sharding)
        targets = in_order(tokens, orders)
        rows = z.shape[0] * z.shape[1]
        if self.head == "softmax":
            per_token = token_cross_entropy(self.logits(z), targets).reshape(rows)
            return jnp.mean(per_token), {"loss": per_token}
        mul = t.shape[0] // rows
        # The mul copies of a token are adjacent rows, so they share one condition row of z.
        target = jnp.repeat(targets.reshape(rows, -1).astype(jnp.float32), mul, axis=0)
        terms = self.diffloss.loss(target, z.reshape(rows, -1), t, noise)
        return jnp.mean(terms["loss"]), terms


def ar_preset(name: str, **overrides: Any) -> AR:
    """An AR module of a preset size ("ar_base", "ar_large", "ar_huge"), with field overrides."""
    return build_preset(AR, PRESETS, name, overrides)


def init_decode_caches(model: AR, batch: int, chunks: int = 1) -> list[KVCache] | KVCache:
    """Empty KV caches of every block for `prefill`, N rows each in `chunks` chunks (`KVCache`), in the
    blocks' layout."""
    return init_caches(model.depth, model.scan_layers, batch, model.seq_len, model.num_heads,
                       model.width // model.num_heads, model.dtype, chunks)


def init_params(model: AR, rng: jax.Array, batch_size: int = 1) -> dict:
    """Initial params of `model` (a pytree of fp32 arrays), touching every submodule once."""
    return nn.unbox(init_boxed_params(model, rng, batch_size))


def init_boxed_params(model: AR, rng: jax.Array, batch_size: int = 1) -> dict:
    """`init_params` with each param boxed with its logical axis names (`nn.LogicallyPartitioned`)."""
    seq_len = model.seq_len
    labels, drop_label = jnp.zeros((batch_size,), jnp.int32), jnp.zeros((batch_size,), bool)
    orders = raster_orders(batch_size, seq_len)
    if model.head == "softmax":
        codes = jnp.zeros((batch_size, seq_len), jnp.int32)
        return model.init(rng, codes, labels, orders, drop_label)["params"]
    rows = batch_size * seq_len
    tokens = jnp.zeros((batch_size, seq_len, model.token_dim), jnp.float32)
    return model.init(rng, tokens, labels, orders, drop_label, jnp.zeros((rows,), jnp.int32),
                      jnp.zeros((rows, model.token_dim)))["params"]


def count_params(model: AR) -> int:
    """Number of parameters, from shapes only (`jax.eval_shape`, nothing allocated)."""
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    return sum(int(x.size) for x in jax.tree.leaves(shapes))
