"""Reading PyTorch weight files (.pth / .ckpt) as numpy, for the converters and for weights the
training program takes from the user (the perceptual network). No flags here, so any module can
import it; PyTorch itself is imported only when a file is read (extra `convert`).
"""
import os
import pickle

from marjax.errors import ConversionError


def load_torch_file(path: str, allow_pickle: bool = False) -> dict:
    """The checkpoint dict of a .pth file, tensors as numpy float32 arrays at any depth."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    try:
        import torch
    except ImportError as e:
        raise ConversionError(f"reading {path} needs PyTorch: pip install -e '.[convert]'") from e
    if os.path.getsize(path) == 0:
        raise ConversionError(f"{path} is empty: corrupt or truncated (download or copy it again)")
    try:
        content = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:  # what weights_only loading raises for objects besides tensors
        if allow_pickle or "weights only" not in str(e).lower():
            raise ConversionError(f"{path} is not a readable PyTorch file ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200]})") from e
        raise ConversionError(f"{path} holds pickled objects besides tensors, which weights_only loading "
                              f"refuses. If you trust the file, rerun with --allow_pickle.") from e
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:  # a cut or damaged zip / pickle stream
        raise ConversionError(f"{path} is corrupt or truncated, or not a PyTorch file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'}); download or copy it "
                              f"again") from e
    if not isinstance(content, dict):
        raise ConversionError(f"{path} holds a {type(content).__name__}, not a dict of weights (a state dict, or a "
                              f"checkpoint dict with a state dict under 'model')")

    def to_numpy(value):
        if isinstance(value, dict):
            return {k: to_numpy(v) for k, v in value.items()}
        return value.detach().float().numpy() if isinstance(value, torch.Tensor) else value

    return to_numpy(content)
