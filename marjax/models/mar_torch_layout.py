"""MAR params from a state dict in the reference's PyTorch key layout (LTH14/mar).

Key names: `encoder_blocks.3.attn.qkv.weight` -> ("encoder_blocks_3", "attn", "qkv", "kernel");
`diffloss.net.res_blocks.0.mlp.2.bias` -> ("diffloss", "res_blocks_0", "mlp_2", "bias");
`adaLN_modulation.1` (after a SiLU in an nn.Sequential) -> "adaLN_modulation".
Linear weights are (out, in) in PyTorch and (in, out) kernels here; LayerNorm weight/bias map
to scale/bias; the class embedding table maps to `class_emb/embedding`; raw parameters
(position embeddings, mask_token, fake_latent) keep their shapes. Keys map to the unscanned
layout; a `scan_layers` model's blocks are stacked after import and unstacked before export.
"""
import re
from typing import Mapping

import flax
import jax
import numpy as np

from marjax.blocks.block_stack import stack_block_params, unstack_block_params
from marjax.models.mar import BLOCK_GROUPS, MAR, init_params
from marjax.torch_layout import params_from_state, state_from_params


def torch_key_to_path(key: str) -> tuple[str, ...]:
    """The Flax param path of a reference state-dict key (without the leaf-kind rename)."""
    parts = key.replace("diffloss.net.", "diffloss.").replace("adaLN_modulation.1", "adaLN_modulation").split(".")
    path: list[str] = []
    for part in parts:
        if part.isdigit():
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part)
    return tuple(path)


def _to_param(key: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    path = torch_key_to_path(key)
    if path == ("class_emb", "weight"):
        return ("class_emb", "embedding"), value
    if path[-1] == "weight":
        return (path[:-1] + ("kernel",), value.T) if value.ndim == 2 else (path[:-1] + ("scale",), value)
    return path, value


def params_from_torch_state(state: Mapping[str, np.ndarray], model: MAR) -> dict:
    """Builds `model`'s param tree from a reference state dict of numpy arrays.

    Every key must be used and every param filled, with matching shapes; otherwise a ValueError
    lists the missing keys, the unexpected keys and the shape mismatches.
    """
    unscanned = model.clone(scan_layers=False)
    expected = flax.traverse_util.flatten_dict(jax.eval_shape(lambda: init_params(unscanned, jax.random.key(0))))
    params = params_from_state(state, expected, _to_param, "MAR")
    return stack_block_params(params, BLOCK_GROUPS) if model.scan_layers else params


def path_to_torch_key(path: tuple[str, ...]) -> str:
    """Inverse of the key mapping: ("diffloss", "res_blocks_0", "adaLN_modulation", "kernel") ->
    "diffloss.net.res_blocks.0.adaLN_modulation.1.weight"."""
    *modules, leaf = path
    if not modules:  # raw parameters: fake_latent, mask_token, position embeddings
        return leaf
    parts = [re.sub(r"_(\d+)$", r".\1", m) for m in modules]
    parts = [p + ".1" if p == "adaLN_modulation" else p for p in parts]
    if parts[0] == "diffloss":
        parts[0] = "diffloss.net"
    return ".".join(parts + ["bias" if leaf == "bias" else "weight"])


def torch_state_from_params(params: dict) -> dict[str, np.ndarray]:
    """MAR params, scanned or not -> a state dict in the reference's layout (numpy, Linear weights (out, in))."""
    return state_from_params(unstack_block_params(params, BLOCK_GROUPS),
                             lambda path, value: (path_to_torch_key(path), value.T if path[-1] == "kernel" else value))
