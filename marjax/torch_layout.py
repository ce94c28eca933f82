"""Moving params between a reference PyTorch state dict and a Flax param tree, in both directions.

Each model's layout module supplies how one entry maps (key and array); these functions check
that every key is used, every param filled and every shape right, and report all problems at once.
"""
import re
from collections.abc import Callable, Mapping

import flax
import numpy as np

Path = tuple[str, ...]


def num_blocks(state: Mapping[str, object], prefix: str) -> int:
    """How many `{prefix}.{i}.` indices the keys of `state` hold (a module list's length)."""
    return len({int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", k))})


def params_from_state(state: Mapping[str, np.ndarray], expected: Mapping[Path, object],
                      to_param: Callable[[str, np.ndarray], tuple[Path, np.ndarray]], what: str) -> dict:
    """state dict -> param tree with the paths and shapes of `expected` (a flat {path: array or
    ShapeDtypeStruct}). Raises ValueError listing missing params, unexpected keys and shape mismatches."""
    params, seen, unexpected, mismatched = {}, set(), [], []
    for key, value in state.items():
        path, value = to_param(key, np.asarray(value, np.float32))
        if path not in expected:
            unexpected.append(key)
            continue
        seen.add(path)
        if tuple(expected[path].shape) != value.shape:
            mismatched.append(f"{key}: {value.shape} vs {tuple(expected[path].shape)}")
            continue
        params[path] = value
    missing = ["/".join(p) for p in expected if p not in seen]
    if unexpected or mismatched or missing:
        raise ValueError(f"{what} state dict does not fit the model: missing {missing}, unexpected {unexpected}, "
                         f"shape mismatches {mismatched}")
    return flax.traverse_util.unflatten_dict(params)


def state_from_params(params: dict, to_entry: Callable[[Path, np.ndarray], tuple[str, np.ndarray]]
                      ) -> dict[str, np.ndarray]:
    """param tree -> state dict of float32 numpy arrays, one entry per param."""
    return dict(to_entry(path, np.asarray(value, np.float32))
                for path, value in flax.traverse_util.flatten_dict(params).items())
