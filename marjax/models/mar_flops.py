"""Analytic FLOPs of MAR training and sampling, per image: the numerator of MFU.

Counted as MFU counts them: matmul FLOPs only (2 per multiply-add) in every Linear and in
attention's two batched products (q k^T and p v); norms, activations, softmax, the diffusion
arithmetic and the optimizer are left out (a few percent). The count is the work the reference
PyTorch code does, so both implementations are measured against the same numerator:
- training: the encoder sees the buffer plus the known tokens, whose number follows the mask
  ratio's truncated normal (the expectation is taken over it); the decoder sees all rows; the
  DiffLoss MLP runs on every token `diffusion_batch_mul` times. One training step is 3 forward
  passes (the backward pass costs two).
- sampling: at step k the encoder sees the buffer plus the tokens known so far, the decoder all
  rows, and the DiffLoss MLP only the tokens predicted at step k, once per diffusion step; with
  CFG (cfg != 1) everything runs twice ([cond; uncond]).
marjax's static shapes compute more than this (the encoder padded to the most known tokens, the
sampler's slabs): that padding is not useful work and is not counted.
"""
import math

import numpy as np
from scipy import stats

from marjax.models.masking import sampling_schedule
from marjax.heads.diffloss_mlp import FREQUENCY_DIM
from marjax.models.mar import MAR

MASK_RATIO_MIN = 0.7  # the reference's truncated normal N(1, 0.25^2) on [0.7, 1]


def attention_flops(rows: int, width: int) -> int:
    """The two attention products of one block on `rows` tokens, q k^T and p v, over all heads."""
    return 2 * 2 * rows * rows * width


def block_flops(rows: int, width: int, mlp_ratio: float = 4.0) -> int:
    """One ViT block on `rows` tokens: qkv, proj, fc1, fc2 and the two attention products."""
    hidden = int(width * mlp_ratio)
    linear_macs = rows * width * (3 * width + width) + 2 * rows * width * hidden
    return 2 * linear_macs + attention_flops(rows, width)


def diffloss_flops_per_row(token_dim: int, cond_dim: int, width: int, depth: int) -> int:
    """One call of the DiffLoss MLP on one row: time and condition embeddings, input projection,
    `depth` adaLN residual blocks (modulation W -> 3W, then W -> W -> W), the final layer."""
    macs = (FREQUENCY_DIM * width + width * width  # time embedding MLP
            + cond_dim * width + token_dim * width  # cond_embed, input_proj
            + depth * (3 * width * width + 2 * width * width)
            + 2 * width * width + width * 2 * token_dim)  # final adaLN and linear
    return 2 * macs


def condition_flops(model: MAR, num_known: int) -> int:
    """Encoder (buffer + `num_known` rows) and decoder (buffer + L rows) for one image. z_proj
    sees all L tokens: the reference drops the masked ones after projecting."""
    enc, dec = model.encoder_width, model.decoder_width
    encoder_rows = model.buffer_size + num_known
    return (2 * model.seq_len * model.token_dim * enc  # z_proj
            + model.encoder_depth * block_flops(encoder_rows, enc, model.mlp_ratio)
            + 2 * encoder_rows * enc * dec  # decoder_embed
            + model.decoder_depth * block_flops(model.buffer_size + model.seq_len, dec, model.mlp_ratio))


def known_token_probabilities(seq_len: int, min_ratio: float = MASK_RATIO_MIN) -> np.ndarray:
    """(L + 1,) probability that a training mask leaves k tokens known, k = 0..L: the mask count
    is ceil(L r), r ~ N(1, 0.25^2) truncated to [min_ratio, 1]."""
    ratio = stats.truncnorm((min_ratio - 1.0) / 0.25, 0.0, loc=1.0, scale=0.25)
    masked = np.arange(seq_len + 1)
    # P(ceil(L r) = m) = P((m - 1) / L < r <= m / L); the clip folds the tail into ceil(L min_ratio).
    probs = ratio.cdf(masked / seq_len) - ratio.cdf((masked - 1) / seq_len)
    first = math.ceil(seq_len * min_ratio)
    probs[first] += probs[:first].sum()
    probs[:first] = 0.0
    return probs[::-1].copy()  # index k = L - m known tokens


def train_flops_per_image(model: MAR, diffusion_batch_mul: int = 4, min_ratio: float = MASK_RATIO_MIN) -> float:
    """Expected matmul FLOPs of one training step per image (forward + backward)."""
    probs = known_token_probabilities(model.seq_len, min_ratio)
    transformer = sum(p * condition_flops(model, k) for k, p in enumerate(probs) if p > 0)
    rows = model.seq_len * diffusion_batch_mul
    mlp = rows * diffloss_flops_per_row(model.token_dim, model.decoder_width, model.diffloss_width,
                                        model.diffloss_depth)
    return 3.0 * (transformer + mlp)


def sample_flops_per_image(model: MAR, num_iter: int, num_diffusion_steps: int, cfg: float) -> int:
    """Matmul FLOPs of sampling one image with `num_iter` steps and `num_diffusion_steps` reverse
    diffusion steps; doubled for CFG (cfg != 1), as the reference runs [cond; uncond]."""
    schedule = sampling_schedule(model.seq_len, num_iter)
    per_row = diffloss_flops_per_row(model.token_dim, model.decoder_width, model.diffloss_width,
                                     model.diffloss_depth)
    total = sum(condition_flops(model, model.seq_len - int(before)) + int(predicted) * num_diffusion_steps * per_row
                for before, predicted in zip(schedule.masked_before, schedule.num_predicted))
    return total * (2 if cfg != 1.0 else 1)
