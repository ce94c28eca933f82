"""Pieces every generator on a token grid shares: latents <-> patch tokens."""
import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

ModuleT = TypeVar("ModuleT")


class PatchTokenGrid:
    """The token grid of a model whose fields latent_size, latent_channels and patch_size describe
    square latents cut into patch_size^2 patches (a mixin for MAR and the AR baselines)."""

    latent_size: int
    latent_channels: int
    patch_size: int

    @property
    def grid(self) -> tuple[int, int]:
        side = self.latent_size // self.patch_size
        return side, side

    @property
    def seq_len(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def token_dim(self) -> int:
        return self.latent_channels * self.patch_size ** 2


def build_preset(module_class: type[ModuleT], presets: Mapping[str, Mapping[str, Any]], name: str,
                 overrides: Mapping[str, Any]) -> ModuleT:
    """`module_class` with the fields of `presets[name]`, then `overrides`; ValueError naming the
    presets for an unknown name, and the valid fields for an unknown override."""
    kind = module_class.__name__
    if name not in presets:
        raise ValueError(f"unknown {kind} preset {name!r}; choose one of {sorted(presets)}")
    fields = {f.name for f in dataclasses.fields(module_class)} - {"parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown {kind} fields {unknown}; valid fields: {sorted(fields)}")
    return module_class(**{**presets[name], **overrides})


def patchify(latents: jax.Array, patch_size: int) -> jax.Array:
    """(B, H, W, C) -> (B, (H/p)*(W/p), C*p*p), each token ordered (c, p, q) as the reference."""
    b, h, w, c = latents.shape
    p = patch_size
    x = latents.reshape(b, h // p, p, w // p, p, c)
    x = jnp.einsum("nhpwqc->nhwcpq", x)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: jax.Array, patch_size: int, grid: tuple[int, int]) -> jax.Array:
    """(B, L, C*p*p) -> (B, H, W, C); inverse of `patchify` for a token grid (H/p, W/p)."""
    b, _, d = tokens.shape
    p = patch_size
    gh, gw = grid
    c = d // (p * p)
    x = tokens.reshape(b, gh, gw, c, p, p)
    x = jnp.einsum("nhwcpq->nhpwqc", x)
    return x.reshape(b, gh * p, gw * p, c)
