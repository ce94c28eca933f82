"""VAR params from and to a state dict in VAR's PyTorch key layout (`models/var.py`, var_d{16,20,24,30}.pth).

Params: `word_embed.{weight,bias}`, `class_emb.weight`, `pos_start` (1, p_1^2, C), `pos_1LC` (1, L, C),
`lvl_embed.weight`, per block `blocks.{i}.attn.{mat_qkv.weight, q_bias, v_bias, scale_mul_1H11, proj.*}`,
`blocks.{i}.ffn.{fc1,fc2}.*` and `blocks.{i}.ada_lin.1.*` (shared AdaLN: `blocks.{i}.ada_gss` (1, 1, 6, C)
and `shared_ada_lin.1.*`), `head_nm.ada_lin.1.*`, `head.*`. Linear weights are (out, in) in PyTorch and
(in, out) kernels here; `scale_mul_1H11` (1, H, 1, 1) is (H,) here, `ada_gss` (6, C).
Buffers the model derives from its sizes: `lvl_1L` (1, L) int64, `attn_bias_for_masking` (1, 1, L, L)
(0 or -inf) and `blocks.{i}.attn.zero_k_bias` (C,) zeros; read, they must hold the values this model
would give them.
"""
import re
from typing import Mapping

import flax
import jax
import numpy as np

from marjax.models.var import VAR, init_params
from marjax.torch_layout import Path, params_from_state, state_from_params

# Flax names that differ from the reference's (its AdaLN Linears sit at index 1 of SiLU -> Linear).
_NAMES = {"qkv": "mat_qkv", "ada_lin": "ada_lin.1", "shared_ada_lin": "shared_ada_lin.1",
          "kernel": "weight", "embedding": "weight", "scale_mul": "scale_mul_1H11"}


def path_to_torch_key(path: Path) -> str:
    """The reference key of a Flax param path: ("blocks_3", "attn", "qkv", "kernel") ->
    "blocks.3.attn.mat_qkv.weight"; ("head", "output", "bias") -> "head.bias"."""
    if path[:2] == ("head", "output"):  # the SoftmaxHead's Linear is the reference's `head`
        path = ("head",) + path[2:]
    return ".".join(_NAMES.get(p, re.sub(r"^blocks_(\d+)$", r"blocks.\1", p)) for p in path)


def _to_torch(path: Path, value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        return value.T
    if path[-1] == "scale_mul":
        return value.reshape(1, -1, 1, 1)
    if path[-1] == "ada_gss":
        return value[None, None]
    return value


def _from_torch(path: Path, value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        return value.T
    if path[-1] == "scale_mul":
        return value.reshape(-1)
    if path[-1] == "ada_gss":
        return value.reshape(-1, value.shape[-1])
    return value


def buffers(model: VAR) -> dict[str, np.ndarray]:
    """The reference's buffers for `model`'s sizes."""
    levels = model.levels()
    mask = levels[None, :] <= levels[:, None]
    out = {"lvl_1L": levels[None].astype(np.int64),
           "attn_bias_for_masking": np.where(mask, 0.0, -np.inf).astype(np.float32)[None, None]}
    out.update({f"blocks.{i}.attn.zero_k_bias": np.zeros(model.width, np.float32) for i in range(model.depth)})
    return out


def params_from_torch_state(state: Mapping[str, np.ndarray], model: VAR) -> dict:
    """Builds `model`'s param tree from a VAR state dict of numpy arrays.

    Every param must be filled, every key used, with matching shapes, and every buffer present must hold
    `model`'s values; otherwise a ValueError lists the missing params, the unexpected keys, the shape
    mismatches and the differing buffers.
    """
    expected = flax.traverse_util.flatten_dict(jax.eval_shape(lambda: init_params(model, jax.random.key(0))))
    path_of = {path_to_torch_key(path): path for path in expected}
    derived = buffers(model)
    differing = [key for key, value in state.items() if key in derived
                 and (np.shape(value) != derived[key].shape or not np.array_equal(np.asarray(value), derived[key]))]

    def to_param(key: str, value: np.ndarray) -> tuple[Path, np.ndarray]:
        path = path_of.get(key, (key,))  # an unknown key maps to no param and is reported
        return path, _from_torch(path, value)

    learned = {key: value for key, value in state.items() if key not in derived}
    try:
        params = params_from_state(learned, expected, to_param, "VAR")
    except ValueError as error:
        raise ValueError(f"{error}, buffers that differ from the model's {differing}") from None
    if differing:
        raise ValueError(f"VAR state dict does not fit the model: buffers that differ from the model's {differing}")
    return params


def torch_state_from_params(params: dict, model: VAR) -> dict[str, np.ndarray]:
    """VAR params -> a state dict in VAR's layout, its buffers included (float32 numpy arrays, Linear
    weights (out, in); `lvl_1L` int64), which the reference loads strictly."""
    state = state_from_params(params, lambda path, value: (path_to_torch_key(path), _to_torch(path, value)))
    return {**state, **buffers(model)}
