"""Image preprocessing of the reference (ADM center crop, flip, [-1, 1]) on host numpy arrays."""
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


def center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM center crop: halve with BOX while the short side >= 2 size, BICUBIC-resize the short
    side to `size`, crop the center square. Returns (size, size, C) uint8."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    top = (array.shape[0] - size) // 2
    left = (array.shape[1] - size) // 2
    return array[top:top + size, left:left + size]


def to_model_range(image: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1], as ToTensor then Normalize(0.5, 0.5)."""
    return image.astype(np.float32) / 127.5 - 1.0


def to_uint8(image: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    """float [-1, 1] (any shape) -> uint8 [0, 255], clipped and rounded. A jax array stays a jax
    array on its devices (evaluation quantises samples where they were generated)."""
    xp = jnp if isinstance(image, jax.Array) else np
    return xp.clip(xp.round((xp.asarray(image, xp.float32) + 1.0) * 127.5), 0, 255).astype(xp.uint8)
