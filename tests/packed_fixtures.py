"""Reading the numbers-only reference fixtures whose weights are stored compactly as int8 grid
values times a power-of-two step per tensor (exact in float32)."""
import numpy as np


def load_npz(path) -> dict[str, np.ndarray]:
    """Every array of an .npz fixture, read at once."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def int8_grid_state(ref: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """The state dict (float32) stored under `prefix`: `<prefix>state/<key>` times `<prefix>step/<key>`
    (a step of 1 when absent: the values were stored as they are)."""
    head = f"{prefix}state/"
    return {k[len(head):]: v.astype(np.float32) * ref.get(f"{prefix}step/{k[len(head):]}", np.float32(1))
            for k, v in ref.items() if k.startswith(head)}
