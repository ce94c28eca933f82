"""MAR params from a state dict in the reference's PyTorch key layout (LTH14/mar).

Key names: `encoder_blocks.3.attn.qkv.weight` -> ("encoder_blocks_3", "attn", "qkv", "kernel");
`diffloss.net.res_blocks.0.mlp.2.bias` -> ("diffloss", "res_blocks_0", "mlp_2", "bias");
`adaLN_modulation.1` (after a SiLU in an nn.Sequential) -> "adaLN_modulation".
Linear weights are (out, in) in PyTorch and (in, out) kernels here; LayerNorm weight/bias map
to scale/bias; the class embedding table maps to `class_emb/embedding`; raw parameters
(position embeddings, mask_token, fake_latent) keep their shapes.
"""
import re
from typing import Mapping

import flax
import jax
import numpy as np

from marjax.models.mar import MAR, init_params


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


def params_from_torch_state(state: Mapping[str, np.ndarray], model: MAR) -> dict:
    """Builds `model`'s param tree from a reference state dict of numpy arrays.

    Every key must be used and every param filled, with matching shapes; otherwise a ValueError
    lists the missing keys, the unexpected keys and the shape mismatches.
    """
    expected = flax.traverse_util.flatten_dict(jax.eval_shape(lambda: init_params(model, jax.random.key(0))))
    params, seen, unexpected, mismatched = {}, set(), [], []
    for key, value in state.items():
        value = np.asarray(value, np.float32)
        path = torch_key_to_path(key)
        leaf = path[-1]
        if leaf == "weight" and path[:-1] == ("class_emb",):
            path = ("class_emb", "embedding")
        elif leaf == "weight":
            path = path[:-1] + (("kernel",) if value.ndim == 2 else ("scale",))
            value = value.T if value.ndim == 2 else value
        seen.add(path)
        if path not in expected:
            unexpected.append(key)
        elif expected[path].shape != value.shape:
            mismatched.append(f"{key}: {value.shape} vs {expected[path].shape}")
        else:
            params[path] = value
    missing = ["/".join(p) for p in expected if p not in seen]
    if unexpected or mismatched or missing:
        raise ValueError(f"state dict does not fit the model: missing {missing}, unexpected {unexpected}, "
                         f"shape mismatches {mismatched}")
    return flax.traverse_util.unflatten_dict(params)


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
    """MAR params -> a state dict in the reference's layout (numpy, Linear weights (out, in))."""
    state = {}
    for path, value in flax.traverse_util.flatten_dict(params).items():
        value = np.asarray(value, np.float32)
        state[path_to_torch_key(path)] = value.T if path[-1] == "kernel" else value
    return state
