"""Pieces every generator on a token grid shares: latents <-> patch tokens."""
import jax
import jax.numpy as jnp


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
