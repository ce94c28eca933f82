"""What editing (in-painting, out-painting, class-conditional editing) shares across families: the
pixel mask of what is kept, turned into known tokens on a family's token grid.

A family's `Task.edit(params, images, keep, labels, rng)` encodes the images with its tokenizer,
marks the tokens `known_token_mask` calls known, and generates the rest with its sampler from those
known tokens (MAR, the causal AR baselines, VQ-GPT), or, for VAR, replaces each scale's known
tokens after it is drawn (`sampling.next_scale.scale_masks`, the reference's own masks).
"""
import jax
import jax.numpy as jnp


def known_token_mask(keep: jax.Array, unit: int) -> jax.Array:
    """keep (B, H, W) bool, True = a pixel to keep -> (B, H/unit, W/unit) bool: a token is known
    when every pixel of its unit x unit cell is kept, so every pixel to regenerate is regenerated."""
    b, h, w = keep.shape
    if h % unit or w % unit:
        raise ValueError(f"the mask's {h}x{w} pixels are not a grid of {unit}x{unit} tokens")
    return jnp.all(keep.reshape(b, h // unit, unit, w // unit, unit), axis=(2, 4))


def known_first_orders(key: jax.Array, known: jax.Array) -> jax.Array:
    """known (B, N) bool -> (B, N) int32 random generation orders with every known position before
    every unknown one (each part in random order), so a random-order model generates each unknown
    token seeing all the known ones."""
    noise = jax.random.uniform(key, known.shape)
    return jnp.argsort(jnp.where(known, noise - 1.0, noise), axis=-1).astype(jnp.int32)
