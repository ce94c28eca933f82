"""Pieces every generator on a token grid shares: latents <-> patch tokens."""
import jax
import jax.numpy as jnp

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
