"""Reading PyTorch weight files (.pth / .ckpt) as numpy, for the converters and for weights the
training program takes from the user (the perceptual network). No flags here, so any module can
import it; PyTorch itself is imported only when a file is read (extra `convert`).
"""
import os

from marjax.errors import ConversionError


def load_torch_file(path: str, allow_pickle: bool = False) -> dict:
    """The checkpoint dict of a .pth file, tensors as numpy float32 arrays at any depth."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    try:
        import torch
    except ImportError as e:
        raise ConversionError(f"reading {path} needs PyTorch: pip install -e '.[convert]'") from e
    try:
        content = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # torch raises UnpicklingError (or others) for pickled objects
        if allow_pickle:
            raise
        raise ConversionError(f"{path} holds pickled objects besides tensors, which weights_only loading "
                              f"refuses ({type(e).__name__}). If you trust the file, rerun with --allow_pickle.") from e

    def to_numpy(value):
        if isinstance(value, dict):
            return {k: to_numpy(v) for k, v in value.items()}
        return value.detach().float().numpy() if isinstance(value, torch.Tensor) else value

    return to_numpy(content)
