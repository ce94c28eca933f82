"""VAR's multi-scale residual quantizer (FoundationVision/VAR `models/quant.py`, VectorQuantizer2).

Latents f (B, H, W, C), H = W = patch_nums[-1], are quantised coarse to fine. At scale k the rest
r = f - (what earlier scales took) is area-resized to (p_k, p_k) (not at the last scale), each
position takes its nearest code (plain squared L2), and the codes' embeddings h, bicubic-resized
back to (H, W) (not at the last scale) and passed through a Phi, are added to f_hat and taken
from r. Phi(h) = (1 - ratio) h + ratio conv3x3(h), ratio 0.5; `num_phis` Phis serve the scales as
`phi_table` says (VAR: 4 shared ones; num_phis = len(patch_nums) is VAR's non-shared variant, 1
its fully shared one).

What the transformer needs: `codes` (images' latents -> codes per scale), `teacher_forcing_input`
(codes -> the inputs of scales 2..K), `next_scale_input` (one sampling step), `latents_from_codes`
(f_hat for the decoder). Layout NHWC; codes of scale k are (B, p_k, p_k) int32, row-major as the
transformer reads them. Resizes match torch's (`marjax.tokenizers.resampling`).
"""
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from marjax.blocks.conv_backbone import conv
from marjax.blocks.layers import named
from marjax.tokenizers.resampling import area_resize, bicubic_resize

# VAR's published tokenizer: 10 scales on 4 Phis. Scale 2 (at 2/9) is exactly 5/36 from ticks
# 1/12 and 13/36; the reference's float64 rounding gives it Phi 1. Kept literally, so that no
# change of that arithmetic can move it.
PHI_TABLES = {(10, 4): (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)}


def phi_table(num_scales: int, num_phis: int) -> tuple[int, ...]:
    """The Phi of each scale: the one whose tick lies nearest to k / (K - 1), ticks
    linspace(1/12, 11/12, 4) for 4 Phis, else linspace(1/2n, 1 - 1/2n, n), in the reference's float64
    arithmetic (VAR's PhiPartiallyShared and PhiNonShared)."""
    if (num_scales, num_phis) in PHI_TABLES:
        return PHI_TABLES[num_scales, num_phis]
    n = num_phis
    ticks = np.linspace(1 / 3 / n, 1 - 1 / 3 / n, n) if n == 4 else np.linspace(1 / 2 / n, 1 - 1 / 2 / n, n)
    return tuple(int(np.argmin(np.abs(ticks - k / (num_scales - 1)))) for k in range(num_scales))


def update_hit_ema(ema: jax.Array, hits: jax.Array, step: int | jax.Array) -> jax.Array:
    """VAR's running per-scale code counts `ema_vocab_hit_SV` (K, V) after one more training
    forward with `hits` (K, V); step: the number of earlier forwards. The reference's counter
    advances once per scale, so scale k of forward `step` is update step * K + k: the very first
    copies its hits, the next ones (below 100) keep 0.9, later ones 0.99."""
    num_scales = ema.shape[0]
    count = step * num_scales + jnp.arange(num_scales)[:, None]
    keep = jnp.where(count == 0, 0.0, jnp.where(count < 100, 0.9, 0.99))
    return jnp.where(count == 0, hits, ema * keep + hits * (1.0 - keep))


def usage_percent(ema: jax.Array, num_positions: int) -> jax.Array:
    """(K,) percent of the codebook each scale uses: codes whose running count `ema` (K, V) reaches
    0.08 of a uniform share of `num_positions` (B H W of the full-size latents, the global batch),
    the reference's margin for every scale."""
    margin = num_positions / ema.shape[1] * 0.08
    return jnp.mean(ema >= margin, axis=1) * 100.0


def dead_codes(ema: jax.Array, positions: jax.Array, threshold: float) -> jax.Array:
    """(V,) bool: the codes whose running count `ema` (K, V), summed over the scales, is below
    `threshold` x a uniform share of a step's positions; positions (K,): B p_k^2 per scale."""
    return jnp.sum(ema, axis=0) < threshold * jnp.sum(positions) / ema.shape[1]


def revive_dead_codes(codebook: jax.Array, ema: jax.Array, residuals: jax.Array, positions: jax.Array,
                      threshold: float, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A remedy for codebook collapse (not in VAR): every `dead_codes` row of codebook (V, C) becomes
    a randomly chosen row of residuals (N, C), the vectors the scales quantised in a batch (distinct
    rows when N >= V), and its counts in ema (K, V) restart at the threshold (threshold B p_k^2 / V
    at scale k), so that it survives the next check only if hit at least that often meanwhile.
    -> (codebook, ema, dead (V,) bool)."""
    num_codes, num_rows = codebook.shape[0], residuals.shape[0]
    dead = dead_codes(ema, positions, threshold)
    picks = jax.random.choice(key, num_rows, (num_codes,), replace=num_rows < num_codes)
    codebook = jnp.where(dead[:, None], residuals[picks].astype(codebook.dtype), codebook)
    ema = jnp.where(dead[None], threshold * positions[:, None] / num_codes, ema)
    return codebook, ema, dead


class MultiScaleQuantizer(nn.Module):
    """VAR's quantizer; its defaults are vae_ch160v4096z32's."""

    codebook_size: int = 4096
    code_dim: int = 32
    patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    num_phis: int = 4
    phi_ratio: float = 0.5
    beta: float = 0.25

    def setup(self):
        # nn.Embedding's default init; VAR's VAE training (not published) may have used another.
        self.codebook = self.param("codebook", named(nn.initializers.normal(1.0), "codes", "code_dim"),
                                   (self.codebook_size, self.code_dim))
        self.phis = [conv(self.code_dim, 3, f"phi_{i}") for i in range(self.num_phis)]
        self.table = phi_table(len(self.patch_nums), self.num_phis)

    def embed(self, codes: jax.Array) -> jax.Array:
        """(...) int codes -> (..., code_dim) codebook rows."""
        return jnp.take(self.codebook, codes, axis=0)

    def _nearest(self, z: jax.Array) -> jax.Array:
        """(B, p, p, C) -> (B, p, p) int32, by |z|^2 + |e|^2 - 2 z.e as the reference (at full
        precision: the codes must be the reference's)."""
        flat = z.reshape(-1, self.code_dim)
        distances = (jnp.sum(flat ** 2, -1, keepdims=True) + jnp.sum(self.codebook ** 2, -1)
                     - 2.0 * jnp.matmul(flat, self.codebook.T, precision=jax.lax.Precision.HIGHEST))
        return jnp.argmin(distances, axis=-1).astype(jnp.int32).reshape(z.shape[:-1])

    def _residual(self, h: jax.Array, scale: int) -> jax.Array:
        """Scale `scale`'s embeddings (B, p, p, C) -> its share of f_hat (B, H, W, C)."""
        if scale != len(self.patch_nums) - 1:
            h = bicubic_resize(h, self.patch_nums[-1])
        phi = self.phis[self.table[scale]]
        return h * (1.0 - self.phi_ratio) + phi(h) * self.phi_ratio

    def _quantize(self, f: jax.Array) -> tuple[list[jax.Array], list[jax.Array], list[jax.Array]]:
        """f (B, H, W, C) -> (codes per scale, f_hat after each scale, what each scale quantised
        (B, p_k, p_k, C): the rest, resized)."""
        last = len(self.patch_nums) - 1
        if f.shape[1:3] != (self.patch_nums[-1],) * 2:
            raise ValueError(f"latents {f.shape} do not match the last scale {self.patch_nums[-1]}")
        rest, f_hat = jax.lax.stop_gradient(f), jnp.zeros_like(f)
        codes, f_hats, inputs = [], [], []
        for k, p in enumerate(self.patch_nums):
            inputs.append(rest if k == last else area_resize(rest, p))
            codes.append(self._nearest(inputs[-1]))
            h = self._residual(self.embed(codes[-1]), k)
            f_hat, rest = f_hat + h, rest - jax.lax.stop_gradient(h)
            f_hats.append(f_hat)
        return codes, f_hats, inputs

    def codes(self, f: jax.Array) -> list[jax.Array]:
        """Latents (B, H, W, C) -> codes per scale, each (B, p_k, p_k) int32."""
        return self._quantize(f)[0]

    def latents_from_codes(self, codes: Sequence[jax.Array]) -> jax.Array:
        """Codes per scale -> f_hat (B, H, W, C), the decoder's input (the first k scales' codes: f_hat
        after scale k)."""
        f_hat = 0.0
        for k, c in enumerate(codes):
            f_hat = f_hat + self._residual(self.embed(c), k)
        return f_hat

    def next_scale_input(self, f_hat: jax.Array, h: jax.Array, scale: int) -> tuple[jax.Array, jax.Array | None]:
        """One sampling step. f_hat (B, H, W, C) so far (zeros before scale 0); h (B, p_k, p_k, C):
        scale k's embeddings, `embed(codes)` (or VAR's more_smooth mix of codebook rows) ->
        (f_hat with scale k added, the next scale's input (B, p_{k+1}^2, C); None after the last)."""
        f_hat = f_hat + self._residual(h, scale)
        if scale == len(self.patch_nums) - 1:
            return f_hat, None
        following = area_resize(f_hat, self.patch_nums[scale + 1])
        return f_hat, following.reshape(f_hat.shape[0], -1, self.code_dim)

    def teacher_forcing_input(self, codes: Sequence[jax.Array]) -> jax.Array:
        """Codes per scale (the last one unused) -> the inputs of scales 2..K in order,
        (B, sum p_k^2 - p_1^2, C): scale k + 1's input is f_hat of scales 1..k area-resized to p_{k+1}."""
        f_hat = jnp.zeros((codes[0].shape[0],) + (self.patch_nums[-1],) * 2 + (self.code_dim,))
        inputs = []
        for k in range(len(self.patch_nums) - 1):
            f_hat, following = self.next_scale_input(f_hat, self.embed(codes[k]), k)
            inputs.append(following)
        return jnp.concatenate(inputs, axis=1)

    def __call__(self, f: jax.Array) -> tuple[jax.Array, list[jax.Array], dict[str, jax.Array]]:
        """Training forward. f (B, H, W, C) -> (f_hat with straight-through gradients to f, codes per
        scale, {"vq_loss": mean over scales of beta mse(sg f_hat_k, f) + mse(f_hat_k, sg f), f_hat_k
        the sum of scales 1..k; "hits": (K, V) how often each scale used each code; "residuals":
        (B, sum p_k^2, C) the vectors the scales quantised, without gradients (`revive_dead_codes`)})."""
        codes, f_hats, inputs = self._quantize(f)
        fixed = jax.lax.stop_gradient(f)
        losses = [self.beta * jnp.mean((jax.lax.stop_gradient(g) - f) ** 2) + jnp.mean((g - fixed) ** 2)
                  for g in f_hats]
        hits = jnp.stack([jnp.bincount(c.reshape(-1), length=self.codebook_size) for c in codes])
        out = jax.lax.stop_gradient(f_hats[-1] - f) + f
        residuals = jnp.concatenate([z.reshape(f.shape[0], -1, self.code_dim) for z in inputs], axis=1)
        return out, codes, {"vq_loss": sum(losses) / len(losses), "hits": hits.astype(jnp.float32),
                            "residuals": residuals}
