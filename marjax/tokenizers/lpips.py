"""LPIPS (Zhang et al. 2018), the perceptual distance of the LDM / taming-transformers tokenizer losses.

Images in [-1, 1] are shifted and scaled per channel, passed through VGG-16's conv layers, and
the five activations after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 are normalised to unit
length over channels. The squared differences of the two images' features are weighted per
channel by a learned 1x1 conv ("lin", no bias), averaged over positions and summed over the five
layers: one distance per image pair.

Weights come from two files the user supplies (nothing is downloaded): torchvision's ImageNet
VGG-16 (`vgg16-397923af.pth`, keys `features.<i>.weight|bias`; its `classifier.*` keys are not
used) and the LPIPS linear layers (`vgg.pth` of the lpips package or taming-transformers'
`vgg_lpips`, keys `lin<k>.model.1.weight` of shape (1, C, 1, 1)).
"""
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from marjax.torch_layout import params_from_state
from marjax.torch_files import ConversionError, load_torch_file

# Output widths of VGG-16's conv layers per block; a 2x2 max pool ends each block but the last.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# LPIPS's ScalingLayer: (x - shift) / scale maps [-1, 1] images to ImageNet's normalisation.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def unit_normalize(features: jax.Array, eps: float = 1e-10) -> jax.Array:
    """(..., C) features divided by (their L2 norm over C + eps), as LPIPS's normalize_tensor.

    The norm is floored at eps before the square root's gradient is taken: a position whose
    features are all zero would otherwise give a NaN gradient (the value changes by < eps)."""
    norm = jnp.sqrt(jnp.maximum(jnp.sum(features ** 2, axis=-1, keepdims=True), eps ** 2))
    return features / (norm + eps)


class LPIPS(nn.Module):
    """Params: `features_<i>` (3x3 convs, i their index in torchvision's `vgg16().features`, where
    each ReLU and pool takes a slot too) and `lin<k>` (1x1, no bias), one per block. `blocks`
    follow the VGG weight file (`vgg_blocks`): VGG-16's for the published LPIPS."""

    blocks: tuple[tuple[int, ...], ...] = VGG16_BLOCKS

    @nn.compact
    def __call__(self, images: jax.Array, references: jax.Array) -> jax.Array:
        """images, references (B, H, W, 3) in [-1, 1] -> (B,) distances. Grayscale (C = 1) images
        are repeated to three channels."""
        x = jnp.concatenate([images, references]).astype(jnp.float32)  # one VGG pass for both
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        x = (x - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
        index = 0  # into torchvision's features: conv, ReLU, ..., pool, conv, ...
        distance = jnp.zeros(images.shape[0], jnp.float32)
        for k, widths in enumerate(self.blocks):
            if k > 0:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                index += 1
            for width in widths:
                x = nn.relu(nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), name=f"features_{index}")(x))
                index += 2
            ours, theirs = jnp.split(unit_normalize(x), 2)
            weighted = nn.Conv(1, (1, 1), use_bias=False, name=f"lin{k}")((ours - theirs) ** 2)
            distance += jnp.mean(weighted, axis=(1, 2, 3))
        return distance


def _to_param(key: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """'features.5.weight' -> ('features_5', 'kernel'); 'lin2.model.1.weight' -> ('lin2', 'kernel')."""
    parts = key.split(".")
    module = f"features_{parts[1]}" if parts[0] == "features" else parts[0]
    name = "bias" if parts[-1] == "bias" else "kernel"
    return (module, name), value.transpose(2, 3, 1, 0) if value.ndim == 4 else value


def vgg_blocks(vgg_state: dict[str, np.ndarray]) -> tuple[tuple[int, ...], ...]:
    """The conv widths per block of a torchvision VGG `features` state dict: VGG16_BLOCKS for
    VGG-16. A conv two slots after the previous one (a ReLU between) continues its block, three
    slots after (ReLU and pool) starts the next. Raises ValueError for any other layout."""
    indices = sorted(int(k.split(".")[1]) for k in vgg_state if re.fullmatch(r"features\.\d+\.weight", k))
    if not indices or indices[0] != 0:
        raise ValueError("not a torchvision VGG state dict: no features.0.weight")
    blocks: list[list[int]] = [[]]
    for previous, index in zip([indices[0] - 2] + indices, indices):
        if index - previous == 3:
            blocks.append([])
        elif index - previous != 2:
            raise ValueError(f"not a torchvision VGG layout: features.{previous} is followed by features.{index}")
        blocks[-1].append(vgg_state[f"features.{index}.weight"].shape[0])
    return tuple(tuple(widths) for widths in blocks)


def lpips_from_torch(vgg_state: dict[str, np.ndarray], lin_state: dict[str, np.ndarray]) -> tuple[LPIPS, dict]:
    """torchvision VGG state dict + LPIPS lin state dict (numpy) -> (`LPIPS` module, its params).

    The network's blocks follow the VGG file (VGG-16 for the published LPIPS). The VGG
    classifier is ignored; any other missing, unexpected or misshapen key raises ValueError
    listing them all."""
    lpips = LPIPS(vgg_blocks(vgg_state))
    example = jnp.zeros((1, 16, 16, 3))
    expected = jax.eval_shape(lpips.init, jax.random.key(0), example, example)["params"]
    state = {k: v for k, v in vgg_state.items() if not k.startswith("classifier.")}
    state.update(lin_state)
    return lpips, params_from_state(state, flax.traverse_util.flatten_dict(expected), _to_param, "LPIPS (VGG + lin)")


def load_lpips(vgg_path: str, lin_path: str) -> tuple[LPIPS, dict]:
    """Reads the two weight files (see the module docstring) -> (`LPIPS` module, its params).

    Raises ConversionError naming a missing file or listing the keys that do not fit."""
    try:
        return lpips_from_torch(load_torch_file(vgg_path), load_torch_file(lin_path))
    except ValueError as e:
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(f"{vgg_path} + {lin_path}: {e}") from e
