"""The FID Inception weight file (pytorch-fid / torch-fidelity state-dict layout) -> `InceptionV3` params.

Keys: `Mixed_5b.branch1x1.conv.weight` <-> ("Mixed_5b", "branch1x1", "conv", "kernel"); BatchNorm
`bn.weight|bias|running_mean|running_var` <-> `bn/scale|bias|mean|var`; `fc.weight|bias`. Conv
weights (O, I, kh, kw) -> kernels (kh, kw, I, O); fc (out, in) -> (in, out). BatchNorm's
`num_batches_tracked` counters are not parameters and are skipped.
"""
import os

import flax
import numpy as np

from marjax.feature_networks import inception
from marjax.torch_layout import params_from_state
from marjax.torch_files import load_torch_file

WEIGHT_FILE = "pt_inception-2015-12-05-6726825d.pth"
TORCH_FIDELITY_WEIGHT_FILE = "weights-inception-2015-12-05-6726825d.pth"
_LEAF = {"weight": "kernel", "bias": "bias"}
_BN_LEAF = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def torch_key_to_path(key: str) -> tuple[str, ...]:
    """'Mixed_5b.branch_pool.bn.running_var' -> ('Mixed_5b', 'branch_pool', 'bn', 'var')."""
    *modules, leaf = key.split(".")
    return (*modules, (_BN_LEAF if modules and modules[-1] == "bn" else _LEAF).get(leaf, leaf))


def to_param(key: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """One state-dict entry -> (param path, array in the Flax layout)."""
    if value.ndim == 4:
        value = value.transpose(2, 3, 1, 0)
    elif value.ndim == 2:
        value = value.T
    return torch_key_to_path(key), value


def params_from_torch_state(state: dict[str, np.ndarray]) -> dict:
    """State dict (numpy arrays) -> `InceptionV3` params. Raises ValueError listing missing and
    unexpected keys and shape mismatches."""
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    return params_from_state(state, flax.traverse_util.flatten_dict(inception.abstract_params()), to_param,
                             "Inception-v3 (FID)")


def load_inception_params(path: str) -> dict:
    """`InceptionV3` params from the FID weight file at `path` (pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
    or torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`; needs PyTorch to read).
    FileNotFoundError naming the file when `path` is empty or absent."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"the FID Inception weights were not found at eval.inception_weights={path!r}: give the path of "
            f"{WEIGHT_FILE} (pytorch-fid) or {TORCH_FIDELITY_WEIGHT_FILE} (torch-fidelity); marjax downloads nothing")
    return params_from_torch_state(load_torch_file(path))
