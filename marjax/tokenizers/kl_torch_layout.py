"""The reference KL-VAE's PyTorch state-dict layout <-> `AutoencoderKL` params.

Keys: `encoder.down.{i}.block.{j}.conv1.weight` <-> ("encoder", "down_{i}_block_{j}", "conv1",
"kernel"); `mid.block_1` <-> "mid_block_1"; `down.{i}.downsample.conv` <-> "down_{i}_downsample",
"conv". Conv weights (O, I, kh, kw) <-> kernels (kh, kw, I, O); GroupNorm weight <-> scale.
"""
import re

import flax
import numpy as np

from marjax.torch_layout import params_from_state, state_from_params


def torch_key_to_path(key: str) -> tuple[str, ...]:
    """'encoder.down.4.attn.0.q.weight' -> ('encoder', 'down_4_attn_0', 'q', 'kernel')."""
    parts = key.split(".")
    param = parts.pop()
    if not parts or param not in ("weight", "bias"):
        return tuple(key.split("."))  # no param of this layout: the caller reports it as unexpected
    path: list[str] = []
    while parts:
        head = parts.pop(0)
        if head in ("down", "up"):  # down.i.block.j / down.i.downsample
            level, kind = parts.pop(0), parts.pop(0)
            path.append(f"{head}_{level}_{kind}" + (f"_{parts.pop(0)}" if kind in ("block", "attn") else ""))
        elif head == "mid":
            path.append(f"mid_{parts.pop(0)}")
        else:
            path.append(head)
    is_norm = path[-1].startswith("norm")
    return (*path, {"weight": "scale" if is_norm else "kernel", "bias": "bias"}[param])


def params_from_torch_state(state: dict[str, np.ndarray], target_shapes: dict) -> dict:
    """Reference state dict (numpy arrays) -> params shaped like `target_shapes` (a params tree of
    arrays or ShapeDtypeStructs). Raises ValueError listing missing/unexpected keys and mismatches."""
    return params_from_state(
        state, flax.traverse_util.flatten_dict(target_shapes),
        lambda key, value: (torch_key_to_path(key), value.transpose(2, 3, 1, 0) if value.ndim == 4 else value),
        "KL-VAE")


def path_to_torch_key(path: tuple[str, ...]) -> str:
    """("encoder", "down_4_attn_0", "q", "kernel") -> "encoder.down.4.attn.0.q.weight"."""
    *modules, leaf = path
    parts = []
    for m in modules:
        m = re.sub(r"^(down|up)_(\d+)_(block|attn)_(\d+)$", r"\1.\2.\3.\4", m)
        m = re.sub(r"^(down|up)_(\d+)_(downsample|upsample)$", r"\1.\2.\3", m)
        parts.append(re.sub(r"^mid_", "mid.", m))
    return ".".join(parts + ["bias" if leaf == "bias" else "weight"])


def torch_state_from_params(params: dict) -> dict[str, np.ndarray]:
    """KL-VAE params -> the reference's state dict (numpy, conv weights (O, I, kh, kw))."""
    return state_from_params(params, lambda path, value: (
        path_to_torch_key(path), value.transpose(3, 2, 0, 1) if value.ndim == 4 else value))
