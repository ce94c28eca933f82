"""Images on disk: sample grids as PNG (one row per class) and the arrays beside them as .npz."""
import os

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, columns: int, border: int = 1) -> np.ndarray:
    """(N, H, W, C) -> one image of `columns` cells per row, row-major, cells separated by a
    `border`-pixel gray line; blank cells at the end."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    cells = np.full((rows * columns, h + border, w + border, c), 128, images.dtype)
    cells[:, :h, :w] = 0
    cells[:n, :h, :w] = images
    grid = cells.reshape(rows, columns, h + border, w + border, c).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * (h + border), columns * (w + border), c)


def grid_columns(labels: np.ndarray) -> int:
    """One row per class when every class has the same count, else about square."""
    counts = np.unique(labels, return_counts=True)[1]
    if len(set(counts.tolist())) == 1 and counts[0] <= 32:
        return int(counts[0])
    return int(np.ceil(np.sqrt(len(labels))))


def write_png(path: str, image: np.ndarray, min_side: int = 256) -> None:
    """Writes a (H, W, C) uint8 image, upscaled by an integer factor (nearest) to >= min_side."""
    factor = max(1, -(-min_side // min(image.shape[:2])))
    image = image.repeat(factor, axis=0).repeat(factor, axis=1)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def write_samples(directory: str, name: str, images: np.ndarray, labels: np.ndarray) -> str:
    """Writes `<name>.png` (the grid) and `<name>.npz` (images, labels); returns the png path."""
    os.makedirs(directory, exist_ok=True)
    png = os.path.join(directory, f"{name}.png")
    write_png(png, image_grid(images, grid_columns(labels)))
    np.savez(os.path.join(directory, f"{name}.npz"), images=images, labels=labels)
    return png
