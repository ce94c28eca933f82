"""VQ-GPT params from and to a state dict in LlamaGen's PyTorch key layout (`autoregressive/models/gpt.py`).

Keys: `cls_embedding.embedding_table.weight`, `tok_embeddings.weight`, `layers.{i}.attention.wqkv.weight`,
`layers.{i}.attention.wo.weight`, `layers.{i}.feed_forward.{w1,w2,w3}.weight`,
`layers.{i}.{attention_norm,ffn_norm}.weight`, `norm.weight`, `output.weight`. Every param is a
`weight` (the GPT has no bias). Linear weights are (out, in) in PyTorch and (in, out) kernels here;
the fused wqkv keeps its [q | k | v] order, which `Attention` splits the same way.
"""
import re
from typing import Mapping

import flax
import jax
import numpy as np

from marjax.models.gpt import GPT, init_params
from marjax.torch_layout import Path, params_from_state, state_from_params

# Flax module names that differ from the reference's.
_MODULE_NAMES = {"cls_embedding": "cls_embedding.embedding_table", "qkv": "wqkv", "proj": "wo"}


def path_to_torch_key(path: Path) -> str:
    """The reference key of a Flax param path: ("layers_3", "attention", "qkv", "kernel") ->
    "layers.3.attention.wqkv.weight"; ("head", "output", "kernel") -> "output.weight"."""
    modules = path[:-1]
    if modules[0] == "head":  # the SoftmaxHead's Linear is the reference's top-level `output`
        modules = modules[1:]
    parts = [_MODULE_NAMES.get(m, re.sub(r"^layers_(\d+)$", r"layers.\1", m)) for m in modules]
    return ".".join(parts + ["weight"])


def _entry(path: Path, value: np.ndarray) -> np.ndarray:
    """A param's array in the other layout: kernels transposed, embeddings and norm weights as they are."""
    return value.T if path[-1] == "kernel" else value


def params_from_torch_state(state: Mapping[str, np.ndarray], model: GPT) -> dict:
    """Builds `model`'s param tree from a LlamaGen GPT state dict of numpy arrays.

    Every key must be used and every param filled, with matching shapes; otherwise a ValueError
    lists the missing params, the unexpected keys and the shape mismatches.
    """
    expected = flax.traverse_util.flatten_dict(jax.eval_shape(lambda: init_params(model, jax.random.key(0))))
    path_of = {path_to_torch_key(path): path for path in expected}

    def to_param(key: str, value: np.ndarray) -> tuple[Path, np.ndarray]:
        path = path_of.get(key, (key,))  # an unknown key maps to no param and is reported
        return path, _entry(path, value)

    return params_from_state(state, expected, to_param, "LlamaGen GPT")


def torch_state_from_params(params: dict) -> dict[str, np.ndarray]:
    """GPT params -> a state dict in LlamaGen's layout (numpy float32, Linear weights (out, in))."""
    return state_from_params(params, lambda path, value: (path_to_torch_key(path), _entry(path, value)))
