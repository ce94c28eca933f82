"""VAR's VQVAE state-dict layout (vae_ch160v4096z32.pth) <-> `VQVAE` params.

The encoder and decoder keys are the KL-VAE's (`kl_torch_layout`) except attention: VAR's one 1x1
`qkv` conv (3C, C) holds q, k, v in that order along its output channels, split here into the
backbone's q, k, v convs. `quantize.embedding.weight` <-> ("quantizer", "codebook"); the Phis
`quantize.quant_resi.qresi_ls.{i}` (VAR's shared 4), `quantize.quant_resi.{i}` (non-shared) or
`quantize.quant_resi.qresi` (one) <-> ("quantizer", "phi_{i}"). The buffer
`quantize.ema_vocab_hit_SV` (K, V) only tracks code usage while training: dropped when reading,
written as zeros.
"""
import re

import flax
import numpy as np

from marjax.tokenizers.kl_torch_layout import path_to_torch_key
from marjax.tokenizers.kl_torch_layout import torch_key_to_path as backbone_key_to_path
from marjax.torch_layout import params_from_state, state_from_params

HIT_BUFFER = "quantize.ema_vocab_hit_SV"
_PHI = re.compile(r"quantize\.quant_resi\.(?:qresi_ls\.(\d+)|(\d+)|qresi)\.(weight|bias)")


def torch_key_to_path(key: str) -> tuple[str, ...]:
    """'quantize.quant_resi.qresi_ls.2.weight' -> ('quantizer', 'phi_2', 'kernel'); encoder and
    decoder keys as the KL-VAE's (a `qkv` key is split first: see `split_qkv`)."""
    if key == "quantize.embedding.weight":
        return ("quantizer", "codebook")
    phi = _PHI.fullmatch(key)
    if phi:
        index = phi.group(1) or phi.group(2) or "0"
        return ("quantizer", f"phi_{index}", "kernel" if phi.group(3) == "weight" else "bias")
    return backbone_key_to_path(key)


def split_qkv(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`X.qkv.weight` (3C, C, 1, 1) and `X.qkv.bias` (3C,) -> `X.{q,k,v}.weight|bias`; the rest as is."""
    out = {}
    for key, value in state.items():
        if ".qkv." in key:
            for name, part in zip("qkv", np.split(np.asarray(value), 3, axis=0)):
                out[key.replace(".qkv.", f".{name}.")] = part
        else:
            out[key] = value
    return out


def params_from_torch_state(state: dict[str, np.ndarray], target_shapes: dict) -> dict:
    """VAR's VQVAE state dict (numpy arrays) -> params shaped like `target_shapes` (a params tree of
    arrays or ShapeDtypeStructs). Raises ValueError listing missing/unexpected keys and mismatches."""
    state = split_qkv({k: v for k, v in state.items() if k != HIT_BUFFER})
    return params_from_state(
        state, flax.traverse_util.flatten_dict(target_shapes),
        lambda key, value: (torch_key_to_path(key), value.transpose(2, 3, 1, 0) if value.ndim == 4 else value),
        "VAR VQVAE")


def _phi_key(index: str, share_quant_resi: int) -> str:
    if share_quant_resi == 0:
        return f"quantize.quant_resi.{index}"
    if share_quant_resi == 1:
        return "quantize.quant_resi.qresi"
    return f"quantize.quant_resi.qresi_ls.{index}"


def torch_state_from_params(params: dict, num_scales: int, share_quant_resi: int = 4) -> dict[str, np.ndarray]:
    """VQVAE params -> VAR's state dict (numpy, conv weights (O, I, kh, kw), q/k/v fused into qkv,
    a zero `ema_vocab_hit_SV` (num_scales, V)). share_quant_resi: VAR's argument naming the Phis'
    keys (0 non-shared, 1 one Phi, else the shared list)."""
    def entry(path, value):
        value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
        if path == ("quantizer", "codebook"):
            return "quantize.embedding.weight", value
        if path[0] == "quantizer":
            prefix = _phi_key(path[1][len("phi_"):], share_quant_resi)
            return f"{prefix}.{'weight' if path[2] == 'kernel' else 'bias'}", value
        return path_to_torch_key(path), value

    state = state_from_params(params, entry)
    for key in [k for k in state if re.search(r"\.q\.(weight|bias)$", k)]:
        parts = [state.pop(key.replace(".q.", f".{name}.")) for name in "qkv"]
        state[key.replace(".q.", ".qkv.")] = np.concatenate(parts, axis=0)
    state[HIT_BUFFER] = np.zeros((num_scales, params["quantizer"]["codebook"].shape[0]), np.float32)
    return state
