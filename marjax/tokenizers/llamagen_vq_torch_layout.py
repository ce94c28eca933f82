"""LlamaGen's VQ state-dict layout (vq_ds16_c2i.pt / vq_ds8_c2i.pt, checkpoint["model"]) <-> `llamagen_vq` params.

LlamaGen names the backbone's modules differently from the KL-VAE (`kl_torch_layout`), whose
functions do the rest once a key is renamed:
- `encoder.conv_blocks.{i}.res.{j}` / `.attn.{j}` / `.downsample` <-> `encoder.down.{i}.block.{j}` / ...
- `decoder.conv_blocks.{i}` is listed from the LOWEST resolution up: it holds level L-1-i of L
  (`decoder.up.{L-1-i}.block.{j}`, `.attn.{j}`, `.upsample`);
- `{encoder,decoder}.mid.{0,1,2}` <-> `mid.block_1`, `mid.attn_1`, `mid.block_2`;
- `quantize.embedding.weight` <-> ("quantizer", "codebook").
The buffer `quantize.codebook_used` (65536 floats: the last codes seen in training, see
`code_usage.update_usage_window`) only serves the training log: dropped when reading, written as zeros.
"""
import re

import flax
import numpy as np

from marjax.tokenizers.code_usage import USAGE_WINDOW
from marjax.tokenizers.kl_torch_layout import path_to_torch_key as kl_path_to_key
from marjax.tokenizers.kl_torch_layout import torch_key_to_path as kl_key_to_path
from marjax.torch_layout import params_from_state, state_from_params

CODEBOOK = "quantize.embedding.weight"
USAGE_BUFFER = "quantize.codebook_used"
_MID = ("block_1", "attn_1", "block_2")  # mid.0, mid.1, mid.2
_LEVEL_KEY = re.compile(r"(encoder|decoder)\.conv_blocks\.(\d+)\.(res|attn|downsample|upsample)\.(.+)")
_KL_LEVEL_KEY = re.compile(r"(encoder|decoder)\.(?:down|up)\.(\d+)\.(block|attn|downsample|upsample)\.(.+)")


def _level(part: str, index: int, num_levels: int) -> int:
    """conv_blocks index <-> backbone level (the same map both ways): the decoder's runs backwards."""
    return index if part == "encoder" else num_levels - 1 - index


def _kl_key(key: str, num_levels: int) -> str:
    """'decoder.conv_blocks.0.res.2.conv1.weight' (L = 5) -> 'decoder.up.4.block.2.conv1.weight'."""
    found = _LEVEL_KEY.fullmatch(key)
    if found:
        part, index, kind, rest = found.groups()
        direction = "down" if part == "encoder" else "up"
        kind = "block" if kind == "res" else kind
        return f"{part}.{direction}.{_level(part, int(index), num_levels)}.{kind}.{rest}"
    found = re.fullmatch(r"(encoder|decoder)\.mid\.([012])\.(.+)", key)
    if found:
        return f"{found[1]}.mid.{_MID[int(found[2])]}.{found[3]}"
    return key


def _llamagen_key(kl_key: str, num_levels: int) -> str:
    """The inverse of `_kl_key`."""
    found = _KL_LEVEL_KEY.fullmatch(kl_key)
    if found:
        part, level, kind, rest = found.groups()
        kind = "res" if kind == "block" else kind
        return f"{part}.conv_blocks.{_level(part, int(level), num_levels)}.{kind}.{rest}"
    found = re.fullmatch(r"(encoder|decoder)\.mid\.(block_1|attn_1|block_2)\.(.+)", kl_key)
    if found:
        return f"{found[1]}.mid.{_MID.index(found[2])}.{found[3]}"
    return kl_key


def torch_key_to_path(key: str, num_levels: int) -> tuple[str, ...]:
    """'encoder.conv_blocks.4.attn.1.q.weight' -> ('encoder', 'down_4_attn_1', 'q', 'kernel');
    num_levels: len(ch_mult) (5 for VQ-16, 4 for VQ-8), which orders the decoder's conv_blocks."""
    if key == CODEBOOK:
        return ("quantizer", "codebook")
    return kl_key_to_path(_kl_key(key, num_levels))


def path_to_torch_key(path: tuple[str, ...], num_levels: int) -> str:
    """("decoder", "up_4_attn_2", "v", "bias") -> "decoder.conv_blocks.0.attn.2.v.bias" (num_levels 5)."""
    if path == ("quantizer", "codebook"):
        return CODEBOOK
    return _llamagen_key(kl_path_to_key(path), num_levels)


def num_levels(params: dict) -> int:
    """len(ch_mult) of a VQModel's params (or their shapes): its encoder's down levels."""
    return sum(1 for name in params["encoder"] if re.fullmatch(r"down_\d+_block_0", name))


def params_from_torch_state(state: dict[str, np.ndarray], target_shapes: dict) -> dict:
    """LlamaGen's VQModel state dict (numpy arrays) -> params shaped like `target_shapes` (a params
    tree of arrays or ShapeDtypeStructs, e.g. of `llamagen_vq("vq16")`). Raises ValueError listing
    missing params, unexpected keys and shape mismatches."""
    levels = num_levels(target_shapes)
    return params_from_state(
        {k: v for k, v in state.items() if k != USAGE_BUFFER}, flax.traverse_util.flatten_dict(target_shapes),
        lambda key, value: (torch_key_to_path(key, levels), value.transpose(2, 3, 1, 0) if value.ndim == 4 else value),
        "LlamaGen VQ")


def torch_state_from_params(params: dict) -> dict[str, np.ndarray]:
    """`llamagen_vq` params -> LlamaGen's state dict (numpy, conv weights (O, I, kh, kw)) with a zero
    `quantize.codebook_used` (65536,)."""
    levels = num_levels(params)
    state = state_from_params(params, lambda path, value: (
        path_to_torch_key(path, levels), value.transpose(3, 2, 0, 1) if value.ndim == 4 else value))
    state[USAGE_BUFFER] = np.zeros((USAGE_WINDOW,), np.float32)
    return state
