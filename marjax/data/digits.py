"""The embedded default data: scikit-learn's 1,797 8x8 handwritten digits, nothing downloaded.

The first `NUM_TRAIN` digits train the independent judges (`marjax.digits_check`'s SVM, the
digits feature network); the rest are held out.
"""
import gzip
import importlib.util
import os

import numpy as np

from marjax.errors import DataError

NUM_TRAIN = 1500


def load_digit_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as `sklearn.datasets.load_digits` gives them: (images (1797, 8, 8)
    float64 in 0..16, targets (1797,) int64), read from the file scikit-learn ships without
    importing scikit-learn (0.6 s of every start). DataError naming the file when it is missing."""
    spec = importlib.util.find_spec("sklearn")
    folder = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else "<not installed>"
    path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
    if not os.path.isfile(path):
        raise DataError(f"the embedded digits need scikit-learn's {path}; install scikit-learn (pip install -e .)")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


class DigitsSource:
    """scikit-learn's 1,797 8x8 handwritten digits (shipped inside the package), 10 classes.

    Pixel values 0..16 are mapped to 0..255 (v * 255 / 16, rounded); one channel.
    """

    def __init__(self, image_size: int = 8):
        if image_size % 8:
            raise DataError(f"digits are 8x8; data.image_size must be a multiple of 8, got {image_size}")
        pixels, labels = load_digit_arrays()
        images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)
        factor = image_size // 8
        images = images.repeat(factor, axis=1).repeat(factor, axis=2)
        self.images = images[..., None]
        self.labels = labels.astype(np.int32)

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
