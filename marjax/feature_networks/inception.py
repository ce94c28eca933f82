"""Inception-v3 as FID uses it: the 2015-12-05 TensorFlow graph that pytorch-fid and torch-fidelity
port, with their weight file `pt_inception-2015-12-05-6726825d.pth` /
`weights-inception-2015-12-05-6726825d.pth` (loaded by `marjax.feature_networks.inception_torch_layout`).

Input: uint8 images of any size, resized to 299x299 with TensorFlow 1.x's bilinear resize
(align_corners=False: source = destination x in/out, no half-pixel shift) and mapped to
(x - 128) / 128. Output: pool3 (the 2048-d average of the last block, FID's features) and the
1008 logits with and without the fc bias (torch-fidelity's Inception Score uses the unbiased ones).

The FID variant differs from torchvision's Inception-v3 in its pools: the branch pools of the
A, C and first E blocks average without counting padding (TF's avg_pool), and the last E block
max-pools. BatchNorm is inference-only (running statistics, eps 1e-3), so every value, running
statistics included, is a param: the frozen network is one param tree. Module and param names
follow the torch layout ("Mixed_5b/branch1x1/conv/kernel").
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
BN_EPS = 1e-3


class FrozenBatchNorm(nn.Module):
    """BatchNorm at inference: (x - mean) / sqrt(var + 1e-3) * scale + bias, all four fixed params."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (x.shape[-1],)
        scale = self.param("scale", nn.initializers.ones, shape)
        bias = self.param("bias", nn.initializers.zeros, shape)
        mean = self.param("mean", nn.initializers.zeros, shape)
        var = self.param("var", nn.initializers.ones, shape)
        return (x - mean) * jax.lax.rsqrt(var + BN_EPS) * scale + bias


class BasicConv(nn.Module):
    """Conv without bias, inference BatchNorm, ReLU."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.features, self.kernel, strides=self.stride, use_bias=False, name="conv",
                    padding=tuple((p, p) for p in self.padding))(x)
        return nn.relu(FrozenBatchNorm(name="bn")(x))


def avg_pool_3x3(x: jax.Array) -> jax.Array:
    """3x3, stride 1, padding 1, averaging only the in-image values (TF's avg_pool)."""
    return nn.avg_pool(x, (3, 3), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3_stride2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, max_pool_3x3_stride2(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv(c7, **row, name="branch7x7_2")(b7)
        b7 = BasicConv(192, **col, name="branch7x7_3")(b7)
        bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, **col, name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, **row, name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, **col, name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, **row, name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, (1, 1), name="branch_pool")(avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, max_pool_3x3_stride2(x)], axis=-1)


class InceptionE(nn.Module):
    """The last two blocks; the FID graph's final one max-pools its pool branch (`max_pool`)."""

    max_pool: bool

    @nn.compact
    def __call__(self, x):
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, **row, name="branch3x3_2a")(b3),
                              BasicConv(384, **col, name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, **row, name="branch3x3dbl_3a")(bd),
                              BasicConv(384, **col, name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = nn.max_pool(x, (3, 3), padding=((1, 1), (1, 1))) if self.max_pool else avg_pool_3x3(x)
        bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """(N, 299, 299, 3) float inputs already in [-1, 1] -> {"pool": (N, 2048), "logits_unbiased",
    "logits": (N, 1008)}. `features` does the resize and normalisation from uint8."""

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = max_pool_3x3_stride2(x)
        x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = max_pool_3x3_stride2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        pool = x.mean(axis=(1, 2))
        fc = nn.Dense(1008, name="fc")
        logits = fc(pool)
        unbiased = logits - fc.variables["params"]["bias"]
        return {"pool": pool, "logits_unbiased": unbiased, "logits": logits}


@functools.lru_cache(maxsize=16)
def tf1_bilinear_matrix(in_size: int, out_size: int = INPUT_SIZE) -> np.ndarray:
    """(out_size, in_size) float32 weights of TF 1.x bilinear resize (align_corners=False):
    output i reads input floor(s) and min(floor(s) + 1, in - 1) with s = i * in / out, weights
    1 - frac and frac. Positions in float32, as the reference computes them."""
    src = np.arange(out_size, dtype=np.float32) * np.float32(in_size / out_size)
    low = src.astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    frac = src - low.astype(np.float32)
    weights = np.zeros((out_size, in_size), np.float32)
    np.add.at(weights, (np.arange(out_size), low), 1.0 - frac)
    np.add.at(weights, (np.arange(out_size), high), frac)
    return weights


def preprocess(images: jax.Array) -> jax.Array:
    """(N, H, W, 3 or 1) uint8 -> (N, 299, 299, 3) float32 in [-1, 1): TF 1.x bilinear resize, then
    (x - 128) / 128. One-channel images are repeated to RGB."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"Inception takes (N, H, W, 3) uint8 images, got shape {images.shape}")
    rows = jnp.asarray(tf1_bilinear_matrix(images.shape[1]))
    cols = jnp.asarray(tf1_bilinear_matrix(images.shape[2]))
    x = jnp.einsum("ph,nhwc,qw->npqc", rows, images.astype(jnp.float32), cols,
                   precision=jax.lax.Precision.HIGHEST)
    x = (x - 128.0) / 128.0
    return jnp.broadcast_to(x, (*x.shape[:3], 3))


_NETWORK = InceptionV3()


@jax.jit
def _trunk(params: dict, x: jax.Array) -> dict[str, jax.Array]:
    return _NETWORK.apply({"params": params}, x)


_preprocess = jax.jit(preprocess)


def features(params: dict, images: jax.Array) -> dict[str, jax.Array]:
    """(N, H, W, 3) uint8 -> {"pool": (N, 2048), "logits_unbiased", "logits": (N, 1008)} float32.
    The resize compiles per input size; the network once per batch size (always 299x299)."""
    return _trunk(params, _preprocess(images))


def abstract_params() -> dict:
    """The param tree's shapes (ShapeDtypeStructs), nothing allocated."""
    return jax.eval_shape(lambda: _NETWORK.init(jax.random.key(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3))))[
        "params"]
