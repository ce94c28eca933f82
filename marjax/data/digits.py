"""The embedded default data: scikit-learn's 1,797 8x8 handwritten digits, nothing downloaded.

The first `NUM_TRAIN` digits train the independent judges (`marjax.digits_check`'s SVM, the
digits feature network); the rest are held out.
"""
import numpy as np
from sklearn.datasets import load_digits

from marjax.errors import DataError

NUM_TRAIN = 1500


class DigitsSource:
    """scikit-learn's 1,797 8x8 handwritten digits (shipped inside the package), 10 classes.

    Pixel values 0..16 are mapped to 0..255 (v * 255 / 16, rounded); one channel.
    """

    def __init__(self, image_size: int = 8):
        if image_size % 8:
            raise DataError(f"digits are 8x8; data.image_size must be a multiple of 8, got {image_size}")
        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        factor = image_size // 8
        images = images.repeat(factor, axis=1).repeat(factor, axis=2)
        self.images = images[..., None]
        self.labels = digits.target.astype(np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": self.labels[index]}


def digit_pixels(images, dtype=np.float64):
    """(N, 8k, 8k[, 1]) uint8 in 0..255 (numpy or jax) -> (N, 64) in the digits' 0..16 scale: k x k
    blocks are averaged back to 8x8, as the digits were upscaled by repetition."""
    side = images.shape[1]
    if images.shape[1] != images.shape[2] or side % 8 or (images.ndim == 4 and images.shape[3] != 1):
        raise ValueError(f"expected square one-channel digit images of side 8k, got shape {images.shape}")
    k = side // 8
    pooled = images.astype(dtype).reshape(len(images), 8, k, 8, k).mean(axis=(2, 4))
    return pooled.reshape(len(images), 64) * (16.0 / 255.0)
