"""MAR: masked autoregressive generation with a per-token diffusion loss (Li et al. 2024).

An MAE-style encoder sees the class-embedding buffer and the known tokens; a decoder fills
in mask tokens and produces one condition vector z per position; the DiffLoss MLP denoises
each token given its z. This module mirrors LTH14/mar `models/mar.py`; randomness (orders,
masks, label drops, timesteps, noise) comes in as arguments so it can be injected.

Static shapes: the number of known tokens varies per step, so the encoder takes a static
`num_keep_max` and processes the known tokens compacted to the front of a fixed-size array,
padding keys masked out of attention. Rows past a sample's count never reach the decoder.

Heads: "diffloss" (the reference) on continuous tokens; "softmax", the MAR paper's CrossEnt
column (MaskGIT-like): integer VQ codes embedded in place of `z_proj`, logits over the codebook
(a Linear, xavier-uniform like every other of MAR's) and cross-entropy on the masked positions.

Layouts: latents are NHWC (B, H, W, C); tokens are (B, L, C*p*p) with the reference's inner
order (c, p, q) and tokens row-major over the (H/p, W/p) grid. `mask` is (B, L) bool, True
where a token is unknown (to predict).

Memory and compile time: `remat` recomputes each block's activations in the backward pass;
`scan_layers` runs each block group as one `nn.scan`, its params stacked along a leading layer
axis (`encoder_blocks` instead of `encoder_blocks_0`, ...). Neither changes the numbers;
`block_stack.stack_block_params(params, BLOCK_GROUPS)` and `unstack_block_params` move params
between the two layouts.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from marjax.blocks.block_stack import make_blocks, run_blocks
from marjax.blocks.layers import Dtype, dense, layer_norm, named, xavier_uniform
from marjax.blocks.transformer import Block
from marjax.heads.diffloss import DiffLoss
from marjax.heads.softmax import SoftmaxHead, cross_entropy, token_cross_entropy
from marjax.models.common import PatchTokenGrid, build_preset

normal_002 = nn.initializers.normal(0.02)

HEADS = ("diffloss", "softmax")

# The transformer block groups; with `scan_layers` each is one stacked entry (`block_stack`).
BLOCK_GROUPS = ("encoder_blocks", "decoder_blocks")

# The published sizes (LTH14/mar): transformer width/depth/heads and the DiffLoss MLP.
PRESETS: dict[str, dict[str, Any]] = {
    "mar_base": dict(encoder_width=768, encoder_depth=12, encoder_heads=12,
                     decoder_width=768, decoder_depth=12, decoder_heads=12,
                     diffloss_depth=6, diffloss_width=1024),
    "mar_large": dict(encoder_width=1024, encoder_depth=16, encoder_heads=16,
                      decoder_width=1024, decoder_depth=16, decoder_heads=16,
                      diffloss_depth=8, diffloss_width=1280),
    "mar_huge": dict(encoder_width=1280, encoder_depth=20, encoder_heads=16,
                     decoder_width=1280, decoder_depth=20, decoder_heads=16,
                     diffloss_depth=12, diffloss_width=1536),
}



class MAR(PatchTokenGrid, nn.Module):
    """The MAR model. Sizes default to the ImageNet-256 setting (16x16 KL-16 latents, 16 channels)."""

    latent_size: int = 16
    latent_channels: int = 16
    patch_size: int = 1
    encoder_width: int = 1024
    encoder_depth: int = 16
    encoder_heads: int = 16
    decoder_width: int = 1024
    decoder_depth: int = 16
    decoder_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    buffer_size: int = 64
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    diffloss_depth: int = 3
    diffloss_width: int = 1024
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    remat: str = "none"  # a key of block_stack.REMAT_POLICIES: "none" | "full" | "dots"
    scan_layers: bool = False  # blocks as one nn.scan over stacked params (see block_stack)
    head: str = "diffloss"  # "diffloss" (continuous tokens) or "softmax" (codes)
    vocab_size: int = 16384  # the softmax head's codebook

    def setup(self):
        if self.head not in HEADS:
            raise ValueError(f"MAR head {self.head!r}: choose one of {HEADS}")
        enc, dec, rows = self.encoder_width, self.decoder_width, self.buffer_size + self.seq_len
        if self.num_classes:  # 0: unconditional, every sample conditions on `fake_latent`
            self.class_emb = nn.Embed(self.num_classes, enc, embedding_init=named(normal_002, "classes", "embed"),
                                      name="class_emb")
        self.fake_latent = self.param("fake_latent", named(normal_002, None, "embed"), (1, enc))
        if self.head == "diffloss":
            self.z_proj = dense(enc, "z_proj", self.dtype, axes=("token", "embed"))
        else:
            self.code_emb = nn.Embed(self.vocab_size, enc, self.dtype,
                                     embedding_init=named(normal_002, "codes", "embed"))
        self.z_proj_ln = layer_norm("z_proj_ln", self.dtype)
        position_init = named(normal_002, None, "seq", "embed")
        self.encoder_pos_embed_learned = self.param("encoder_pos_embed_learned", position_init, (1, rows, enc))
        self.encoder_blocks = self._blocks(self.encoder_heads, self.encoder_depth, "encoder_blocks")
        self.encoder_norm = layer_norm("encoder_norm", self.dtype)

        self.decoder_embed = dense(dec, "decoder_embed", self.dtype)
        self.mask_token = self.param("mask_token", named(normal_002, None, None, "embed"), (1, 1, dec))
        self.decoder_pos_embed_learned = self.param("decoder_pos_embed_learned", position_init, (1, rows, dec))
        self.decoder_blocks = self._blocks(self.decoder_heads, self.decoder_depth, "decoder_blocks")
        self.decoder_norm = layer_norm("decoder_norm", self.dtype)
        self.diffusion_pos_embed_learned = self.param(
            "diffusion_pos_embed_learned", position_init, (1, self.seq_len, dec))

        if self.head == "diffloss":
            self.diffloss = DiffLoss(self.token_dim, self.diffloss_width, self.diffloss_depth, self.dtype,
                                     name="diffloss")
        else:
            self.softmax = SoftmaxHead(self.vocab_size, self.dtype, use_bias=True, kernel_init=xavier_uniform)

    def _blocks(self, heads: int, depth: int, group: str) -> Block | list[Block]:
        return make_blocks(lambda name: Block(heads, self.mlp_ratio, self.attn_dropout, self.proj_dropout,
                                              self.dtype, self.attention_impl, name=name),
                           group, depth, self.scan_layers)

    def class_embedding(self, labels: jax.Array, drop_label: jax.Array) -> jax.Array:
        """labels (B,) int, drop_label (B,) bool -> (B, D): the class embedding, or `fake_latent` where
        dropped (everywhere for an unconditional model)."""
        if not self.num_classes:
            return jnp.broadcast_to(self.fake_latent, (labels.shape[0], self.fake_latent.shape[-1]))
        return jnp.where(drop_label[:, None], self.fake_latent, self.class_emb(labels))

    def encode(self, tokens: jax.Array, mask: jax.Array, class_embedding: jax.Array, num_keep_max: int,
               deterministic: bool = True, batch_sharding: jax.sharding.Sharding | None = None) -> jax.Array:
        """The MAE encoder on the buffer rows and the known tokens.

        Args:
          tokens: (B, L, token_dim) float, or (B, L) int codes (softmax head). mask: (B, L) bool,
            True = unknown. class_embedding: (B, D).
          num_keep_max: static upper bound on the number of known tokens per sample.
        Returns:
          (B, buffer + num_keep_max, D): buffer rows, then the known tokens in ascending position
          order; rows past a sample's known count are padding.
        """
        b = tokens.shape[0]
        x = self.z_proj(tokens) if self.head == "diffloss" else self.code_emb(tokens)
        buffer = jnp.broadcast_to(class_embedding[:, None, :].astype(x.dtype), (b, self.buffer_size, x.shape[-1]))
        x = self.z_proj_ln(jnp.concatenate([buffer, x], axis=1) + self.encoder_pos_embed_learned)
        # A stable argsort of the mask puts the known tokens first, in ascending position order.
        keep_index = jnp.argsort(mask, axis=1, stable=True)[:, :num_keep_max]
        known = jnp.take_along_axis(x[:, self.buffer_size:], keep_index[:, :, None], axis=1)
        x = jnp.concatenate([x[:, :self.buffer_size], known], axis=1)
        lengths = self.buffer_size + jnp.sum(~mask, axis=1)
        x = run_blocks(self.encoder_blocks, x, lengths, deterministic, self.remat, self.encoder_depth,
                       batch_sharding)
        return self.encoder_norm(x)

    def decode(self, x: jax.Array, mask: jax.Array, deterministic: bool = True,
               batch_sharding: jax.sharding.Sharding | None = None) -> jax.Array:
        """The decoder: encoder rows back in place, mask tokens elsewhere.

        Args:
          x: (B, buffer + K, D) output of `encode`. mask: (B, L) bool, True = unknown.
        Returns:
          z: (B, L, D_dec), the condition of the DiffLoss MLP for every position.
        """
        x = self.decoder_embed(x)
        # The k-th known token (in position order) sits at encoder row buffer + k.
        rank = jnp.cumsum(~mask, axis=1) - 1
        rank = jnp.clip(rank, 0, x.shape[1] - self.buffer_size - 1)
        known = jnp.take_along_axis(x[:, self.buffer_size:], rank[:, :, None], axis=1)
        tokens = jnp.where(mask[:, :, None], self.mask_token.astype(x.dtype), known)
        x = jnp.concatenate([x[:, :self.buffer_size], tokens], axis=1) + self.decoder_pos_embed_learned
        x = run_blocks(self.decoder_blocks, x, None, deterministic, self.remat, self.decoder_depth, batch_sharding)
        x = self.decoder_norm(x)[:, self.buffer_size:]
        return x + self.diffusion_pos_embed_learned

    def condition(self, tokens: jax.Array, mask: jax.Array, labels: jax.Array, drop_label: jax.Array,
                  num_keep_max: int, deterministic: bool = True,
                  batch_sharding: jax.sharding.Sharding | None = None) -> jax.Array:
        """Encoder then decoder: (B, L, token_dim) tokens -> z (B, L, D_dec). `batch_sharding`: see
        `__call__`."""
        class_embedding = self.class_embedding(labels, drop_label)
        x = self.encode(tokens, mask, class_embedding, num_keep_max, deterministic, batch_sharding)
        return self.decode(x, mask, deterministic, batch_sharding)

    def denoise(self, x: jax.Array, t: jax.Array, z: jax.Array) -> jax.Array:
        """The DiffLoss denoiser: x (N, token_dim), original timesteps t (N,) or (1,) shared, z (N / k, D_dec)
        with each row conditioning k consecutive rows of x -> (N, 2*token_dim) fp32."""
        return self.diffloss(x, t, z).astype(jnp.float32)

    def logits(self, z: jax.Array) -> jax.Array:
        """The softmax head: z (..., D_dec) -> (..., vocab_size) float32."""
        return self.softmax(z)

    def sample_tokens(self, z: jax.Array, noise_fn, temperature: jax.Array, cfg_scale: jax.Array | None,
                      num_diffusion_steps: int | str, clip_denoised: float = 0.0) -> jax.Array:
        """Tokens (N, token_dim) for conditions z (N, D_dec), or (2N, D_dec) = [cond; uncond] with
        guidance: the DiffLoss head's reverse process (`DiffLoss.sample`)."""
        return self.diffloss.sample(z, noise_fn, temperature, cfg_scale, num_diffusion_steps, clip_denoised)

    def __call__(self, tokens: jax.Array, labels: jax.Array, mask: jax.Array, drop_label: jax.Array,
                 t: jax.Array | None, noise: jax.Array | None, num_keep_max: int, num_masked_max: int | None = None,
                 deterministic: bool = True, batch_sharding: jax.sharding.Sharding | None = None,
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The training loss with all randomness given.

        Args:
          tokens: (B, L, token_dim) clean tokens. labels: (B,). mask: (B, L) bool, True = masked.
          drop_label: (B,) bool, use `fake_latent` instead of the class embedding.
          t: (B*L*mul,) timesteps in 0..999 and noise: (B*L*mul, token_dim), for the rows of the
            flattened tokens tiled `mul` (diffusion_batch_mul) times as whole copies.
          num_keep_max: static bound on the number of unmasked tokens per sample.
          num_masked_max: static bound on the number of masked tokens per sample, or None (= L).
            The DiffLoss MLP runs on that many positions per sample, masked ones first; the
            reference runs it on all L and zeroes the loss of the known ones, which is the same loss.
          batch_sharding: the mesh's batch sharding when the batch is split over devices, kept by
            the DiffLoss rows and the transformer's activations; None on one device.
        Returns:
          (loss, terms): loss = sum(row_loss * mask) / sum(mask) over the tiled rows; terms holds
          the per-row "mse", "vb" and "loss" (N,), 0 at the rows of positions not computed.

        The softmax head: tokens (B, L) int codes, t and noise None; loss = the mean cross-entropy
        over the masked positions (all L computed; num_masked_max unused), terms {"loss": (B*L,)}.
        """
        z = self.condition(tokens, mask, labels, drop_label, num_keep_max, deterministic, batch_sharding)
        if self.head == "softmax":
            logits = self.logits(z)
            loss = cross_entropy(logits, tokens, mask)
            return loss, {"loss": jnp.where(mask, token_cross_entropy(logits, tokens), 0.0).reshape(-1)}
        b, seq_len, token_dim = tokens.shape
        mul = t.shape[0] // (b * seq_len)
        t, noise = t.reshape(mul, b, seq_len), noise.reshape(mul, b, seq_len, token_dim)
        if num_masked_max is not None and num_masked_max < seq_len:
            # A stable argsort of ~mask puts each sample's masked positions first.
            positions = jnp.argsort(~mask, axis=1, stable=True)[:, :num_masked_max]
            tokens, z, mask = (jnp.take_along_axis(x, positions.reshape(positions.shape + (1,) * (x.ndim - 2)), axis=1)
                               for x in (tokens, z, mask))
            t = jnp.take_along_axis(t, positions[None], axis=2)
            noise = jnp.take_along_axis(noise, positions[None, :, :, None], axis=2)
        rows = tokens.shape[1]

        # The MLP's rows are ordered (B, rows, mul): batch-major, so a batch split over devices
        # stays split, and the mul copies of a token adjacent, so they share one condition row.
        # `t`, `noise` and the returned terms keep the reference's copy-major order.
        def row_major(x: jax.Array) -> jax.Array:
            x = jnp.moveaxis(x, 0, 2).reshape((b * rows * mul,) + x.shape[3:])
            return x if batch_sharding is None else jax.lax.with_sharding_constraint(x, batch_sharding)

        t, noise = row_major(t), row_major(noise)
        target = jnp.repeat(tokens.reshape(b * rows, token_dim).astype(jnp.float32), mul, axis=0)
        terms = self.diffloss.loss(target, z.reshape(b * rows, z.shape[-1]), t, noise)
        row_mask = jnp.repeat(mask.reshape(-1), mul).astype(jnp.float32)
        loss = jnp.sum(terms["loss"] * row_mask) / jnp.sum(row_mask)

        def copy_major(v: jax.Array) -> jax.Array:
            v = v.reshape(b, rows, mul)
            if rows < seq_len:
                v = jnp.zeros((b, seq_len, mul), v.dtype).at[jnp.arange(b)[:, None], positions].set(v)
            return jnp.moveaxis(v, 2, 0).reshape(-1)

        return loss, {k: copy_major(v) for k, v in terms.items()}



def mar_preset(name: str, **overrides: Any) -> MAR:
    """A MAR module of a published size ("mar_base", "mar_large", "mar_huge"), with field overrides."""
    return build_preset(MAR, PRESETS, name, overrides)


def init_params(model: MAR, rng: jax.Array, batch_size: int = 1) -> dict:
    """Initial params of `model` (a pytree of fp32 arrays), touching every submodule once."""
    return nn.unbox(init_boxed_params(model, rng, batch_size))


def init_boxed_params(model: MAR, rng: jax.Array, batch_size: int = 1) -> dict:
    """`init_params` with each param boxed with its logical axis names (`nn.LogicallyPartitioned`)."""
    labels = jnp.zeros((batch_size,), jnp.int32)
    mask = jnp.zeros((batch_size, model.seq_len), bool)
    rows = batch_size * model.seq_len
    if model.head == "softmax":
        return model.init(rng, jnp.zeros((batch_size, model.seq_len), jnp.int32), labels, mask,
                          jnp.zeros((batch_size,), bool), None, None, num_keep_max=model.seq_len)["params"]
    tokens = jnp.zeros((batch_size, model.seq_len, model.token_dim), jnp.float32)
    return model.init(rng, tokens, labels, mask, jnp.zeros((batch_size,), bool),
                      jnp.zeros((rows,), jnp.int32), jnp.zeros((rows, model.token_dim)),
                      num_keep_max=model.seq_len)["params"]


def count_params(model: MAR) -> int:
    """Number of parameters, from shapes only (`jax.eval_shape`, nothing allocated)."""
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    return sum(int(x.size) for x in jax.tree.leaves(shapes))
