"""Vector quantisation with a learned codebook (LlamaGen's VQ-16 head, taming's VQGAN).

z (..., d) -> nearest code (..., d), its index, and the losses. With `l2_normalize` (LlamaGen)
both z and the codes are unit-normalised before the nearest-code search and the losses.
Losses: codebook mse(z_q, sg z) + commitment beta * mse(sg z_q, z), beta 0.25. The output
passes gradients straight through to z: z + sg(z_q - z).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from marjax.blocks.layers import named
from marjax.tokenizers.code_usage import code_statistics


def _normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class VectorQuantizer(nn.Module):
    codebook_size: int = 16384
    code_dim: int = 8
    beta: float = 0.25
    l2_normalize: bool = True

    @nn.compact
    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """z: (..., code_dim) -> (z_q with straight-through gradients (..., code_dim),
        indices (...) int32, {"codebook_loss", "commitment_loss", "codebook_usage", "perplexity"})."""
        k = self.codebook_size
        codebook_init = named(_uniform(1.0 / k), "codes", "code_dim")  # uniform(+-1/k) as LlamaGen
        codebook = self.param("codebook", codebook_init, (k, self.code_dim))
        if self.l2_normalize:
            z, codebook = _normalize(z), _normalize(codebook)
        flat = z.reshape(-1, self.code_dim)
        distances = (jnp.sum(flat ** 2, -1, keepdims=True) - 2 * flat @ codebook.T
                     + jnp.sum(codebook ** 2, -1)[None])
        indices = jnp.argmin(distances, axis=-1).astype(jnp.int32).reshape(z.shape[:-1])
        z_q = codebook[indices]
        losses = {"codebook_loss": jnp.mean((z_q - jax.lax.stop_gradient(z)) ** 2),
                  "commitment_loss": self.beta * jnp.mean((jax.lax.stop_gradient(z_q) - z) ** 2)}
        z_q = z + jax.lax.stop_gradient(z_q - z)
        return z_q, indices, {**losses, **code_statistics(indices, k)}

    def lookup(self, indices: jax.Array) -> jax.Array:
        """indices (...) -> codes (..., code_dim), normalised when `l2_normalize`."""
        codebook = self.get_variable("params", "codebook")
        return (_normalize(codebook) if self.l2_normalize else codebook)[indices]
