"""MAR params from a state dict in the reference's PyTorch key layout (LTH14/mar).

Key names: `encoder_blocks.3.attn.qkv.weight` -> ("encoder_blocks_3", "attn", "qkv", "kernel");
`diffloss.net.res_blocks.0.mlp.2.bias` -> ("diffloss", "res_blocks_0", "mlp_2", "bias");
`adaLN_modulation.1` (after a SiLU in an nn.Sequential) -> "adaLN_modulation".
Linear weights are (out, in) in PyTorch and (in, out) kernels here; LayerNorm weight/bias map
to scale/bias; the class embedding table maps to `class_emb/embedding`; raw parameters
(position embeddings, mask_token, fake_latent) keep their shapes. Keys map to the unscanned
layout; a `scan_layers` model's blocks are stacked after import and unstacked before export.
"""
import math
import re
from typing import Any, Mapping

import flax
import jax
import numpy as np

from marjax.blocks.block_stack import stack_block_params, unstack_block_params
from marjax.models.mar import BLOCK_GROUPS, MAR, PRESETS, init_params
from marjax.torch_layout import num_blocks, params_from_state, state_from_params


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


# The file does not record attention heads. A width of a published size takes that size's heads;
# another width takes width / HEAD_DIM heads (MAR-B's and MAR-L's head dim), or --heads.
PUBLISHED_HEADS = {sizes[f"{stack}_width"]: sizes[f"{stack}_heads"] for sizes in PRESETS.values()
                   for stack in ("encoder", "decoder")}
HEAD_DIM = 64


def _heads(width: int, given: int | None, stack: str) -> int:
    heads = given or PUBLISHED_HEADS.get(width) or (width // HEAD_DIM if width % HEAD_DIM == 0 else None)
    if heads is None or width % heads:
        raise ValueError(f"the {stack}'s width {width} has no published head count and is not a multiple of "
                         f"{HEAD_DIM}" + (f", nor of --heads={given}" if given else "")
                         + ": give --heads (the file does not record them)")
    return heads


def mar_sizes_from_state(state: Mapping[str, Any], latent_channels: int = 16,
                         heads: tuple[int, int] | None = None) -> dict[str, Any]:
    """MAR's fields (as `MAR(**sizes)` takes them) read from the shapes of a reference state dict:
    widths (z_proj, decoder_embed), depths (block counts), mlp_ratio (fc1), classes (class_emb),
    the token grid (diffusion_pos_embed_learned: side x side tokens), buffer_size (the encoder's
    positions beyond the grid), the DiffLoss MLP (input_proj, res_blocks) and the token dim.

    The token dim is latent_channels x patch_size²: `latent_channels` (the tokenizer's channels;
    the reference's default 16) settles the patch size. Heads: `heads` (encoder, decoder) when
    given, else `PUBLISHED_HEADS` of the width, else width / HEAD_DIM. KeyError when a key the
    sizes come from is missing; ValueError naming the flag that settles an ambiguous shape."""
    encoder_width, token_dim = state["z_proj.weight"].shape
    decoder_width = state["decoder_embed.weight"].shape[0]
    seq_len = state["diffusion_pos_embed_learned"].shape[1]
    side = math.isqrt(seq_len)
    if side * side != seq_len:
        raise ValueError(f"diffusion_pos_embed_learned has {seq_len} positions, not a square token grid")
    patch = math.isqrt(token_dim // latent_channels)
    if latent_channels * patch * patch != token_dim:
        raise ValueError(f"the token dim {token_dim} is not --latent_channels={latent_channels} times a square patch "
                         f"size: give --latent_channels (the tokenizer's latent channels, vae_embed_dim)")
    given = heads or (None, None)
    return dict(encoder_width=encoder_width, encoder_depth=num_blocks(state, "encoder_blocks"),
                encoder_heads=_heads(encoder_width, given[0], "encoder"),
                decoder_width=decoder_width, decoder_depth=num_blocks(state, "decoder_blocks"),
                decoder_heads=_heads(decoder_width, given[1], "decoder"),
                mlp_ratio=state["encoder_blocks.0.mlp.fc1.weight"].shape[0] / encoder_width,
                num_classes=state["class_emb.weight"].shape[0],
                buffer_size=state["encoder_pos_embed_learned"].shape[1] - seq_len,
                diffloss_width=state["diffloss.net.input_proj.weight"].shape[0],
                diffloss_depth=num_blocks(state, "diffloss.net.res_blocks"),
                patch_size=patch, latent_size=side * patch, latent_channels=latent_channels)
