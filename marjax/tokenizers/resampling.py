"""PyTorch's `area`, `bicubic` and `bilinear` image resizing as explicit (out, in) matrices, applied separably.

VAR's multi-scale quantizer resizes with `F.interpolate(mode='area')` and `mode='bicubic'`, and its
zero-shot editing resizes the edit mask with `mode='bilinear'`; `jax.image.resize` differs (Keys
a = -0.5, antialiasing when shrinking), so its checkpoints need these. Each resize is
out = R_h x R_w^T per channel, with R built in numpy at trace time from the static sizes.

- area = adaptive average pooling: output i averages inputs [floor(i n / m), ceil((i + 1) n / m)),
  bins that overlap when m does not divide n.
- bicubic: Keys' kernel with a = -0.75, align_corners=False (source x = (i + 0.5) n / m - 0.5,
  not clamped), the four taps' indices clamped into [0, n), no antialiasing when shrinking.
- bilinear: align_corners=False, source x = max((i + 0.5) n / m - 0.5, 0) in float32 as torch
  computes it, taps floor(x) and the next one (the last pixel at the border), no antialiasing.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

CUBIC_A = -0.75


@functools.lru_cache(maxsize=None)
def area_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out_size, in_size) float32: row i averages torch's adaptive-pooling bin i."""
    matrix = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -(-((i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    matrix = matrix.astype(np.float32)
    matrix.setflags(write=False)  # cached and shared
    return matrix


def _cubic_weights(t: float) -> np.ndarray:
    """Keys' weights of the taps at offsets -1, 0, 1, 2 from floor(x), t = x - floor(x)."""
    a = CUBIC_A

    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return np.array([far(t + 1), near(t), near(1 - t), far(2 - t)])


@functools.lru_cache(maxsize=None)
def bicubic_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out_size, in_size) float32: torch's bicubic taps (border taps clamped and summed)."""
    matrix = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for i in range(out_size):
        x = (i + 0.5) * scale - 0.5
        base = int(np.floor(x))
        for offset, weight in zip(range(-1, 3), _cubic_weights(x - base)):
            matrix[i, min(max(base + offset, 0), in_size - 1)] += weight
    matrix = matrix.astype(np.float32)
    matrix.setflags(write=False)
    return matrix


@functools.lru_cache(maxsize=None)
def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out_size, in_size) float32: torch's bilinear taps, their weights in torch's float32 arithmetic
    (an edit mask is thresholded at 0.5 after this resize, so ties must fall as torch's do)."""
    matrix = np.zeros((out_size, in_size), np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    for i in range(out_size):
        x = max(scale * (np.float32(i) + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
        base = int(x)
        weight = np.float32(x - np.float32(base))
        matrix[i, base] += np.float32(1.0) - weight
        matrix[i, min(base + 1, in_size - 1)] += weight
    matrix.setflags(write=False)
    return matrix


def resize(x: jax.Array, matrix_h: np.ndarray, matrix_w: np.ndarray) -> jax.Array:
    """x (B, H, W, C), matrix_h (h, H), matrix_w (w, W) -> (B, h, w, C), in fp32 at full precision
    (the quantizer's nearest-code search downstream must see the reference's numbers)."""
    return jnp.einsum("ip,bpqc,jq->bijc", matrix_h, x, matrix_w, precision=jax.lax.Precision.HIGHEST)


def area_resize(x: jax.Array, size: int) -> jax.Array:
    """(B, H, W, C) -> (B, size, size, C) as torch's `F.interpolate(mode='area')`."""
    return resize(x, area_matrix(size, x.shape[1]), area_matrix(size, x.shape[2]))


def bicubic_resize(x: jax.Array, size: int) -> jax.Array:
    """(B, H, W, C) -> (B, size, size, C) as torch's `F.interpolate(mode='bicubic')`."""
    return resize(x, bicubic_matrix(size, x.shape[1]), bicubic_matrix(size, x.shape[2]))


def bilinear_resize(x: jax.Array, size: int) -> jax.Array:
    """(B, H, W, C) -> (B, size, size, C) as torch's `F.interpolate(mode='bilinear')`."""
    return resize(x, bilinear_matrix(size, x.shape[1]), bilinear_matrix(size, x.shape[2]))
