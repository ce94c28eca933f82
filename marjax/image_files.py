"""Images on disk: sample grids as PNG (one row per class) and the arrays beside them as .npz."""
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_MARGIN = 48  # pixels left of an upscaled grid for its row labels


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


def write_png(path: str, image: np.ndarray, min_side: int = 256, min_width: int = 0,
              row_labels: list[str] | None = None) -> None:
    """Writes a (H, W, C) uint8 image, upscaled by an integer factor (nearest) to >= min_side on its
    short side and >= min_width across. row_labels: one text per row of a grid of len(row_labels)
    equal rows, written in a margin at the left of each."""
    factor = max(1, -(-min_side // min(image.shape[:2])), -(-min_width // image.shape[1]))
    image = image.repeat(factor, axis=0).repeat(factor, axis=1)
    picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    if row_labels:
        picture = _with_row_labels(picture, row_labels)
    picture.save(path)


def _with_row_labels(picture: Image.Image, row_labels: list[str]) -> Image.Image:
    """The picture with a white margin at its left holding row_labels[i] beside row i."""
    labelled = Image.new(picture.mode, (picture.width + LABEL_MARGIN, picture.height), "white")
    labelled.paste(picture, (LABEL_MARGIN, 0))
    row_height = picture.height / len(row_labels)
    font = ImageFont.load_default(size=max(8, min(24, int(row_height * 0.6))))
    draw = ImageDraw.Draw(labelled)
    for i, text in enumerate(row_labels):
        draw.text((LABEL_MARGIN // 2, (i + 0.5) * row_height), text, fill="black", font=font, anchor="mm")
    return labelled


def class_rows(labels: np.ndarray, columns: int) -> list[str] | None:
    """The class id of each grid row ("3", ...) when every row holds one class, else None."""
    if len(labels) % columns:
        return None
    rows = np.asarray(labels).reshape(-1, columns)
    return [str(row[0]) for row in rows] if (rows == rows[:, :1]).all() else None


def write_samples(directory: str, name: str, images: np.ndarray, labels: np.ndarray | None) -> str:
    """Writes `<name>.png` (the grid, at least 512 px wide, the class id beside each row of one
    class) and `<name>.npz` (images, and labels unless None: an unconditional model's samples);
    returns the png path."""
    os.makedirs(directory, exist_ok=True)
    png = os.path.join(directory, f"{name}.png")
    if labels is None:
        columns = int(np.ceil(np.sqrt(len(images))))
        write_png(png, image_grid(images, columns), min_width=512)
        np.savez(os.path.join(directory, f"{name}.npz"), images=images)
        return png
    columns = grid_columns(labels)
    write_png(png, image_grid(images, columns), min_width=512, row_labels=class_rows(labels, columns))
    np.savez(os.path.join(directory, f"{name}.npz"), images=images, labels=labels)
    return png
