"""Writes a folder of 28x28 handwritten digits in class subfolders, made from the embedded 8x8 digits,
for the "your own small image folder" check (BENCHMARKS.md "Sample quality beyond the 8x8 digits").

  python benchmarks/digit_folder.py --output=/tmp/digits28            # train/<0..9>/*.png, heldout/<0..9>/*.png

Each 8x8 digit is resized bicubically to 20x20, centred on a 28x28 black square (as MNIST
places its digits) and warped by a random affine map (rotation up to 12 degrees, scale
0.9-1.1, shear up to 0.15, shift up to 2 px), then lightly blurred: smooth strokes, no 8x8
blocks. `train/` holds `--per_digit` versions of each of the first 1,500 digits (6,000 at the
default 4); `heldout/` holds versions of the other 297, which no model trains on: the
independent judge (`benchmarks/folder_check.py`) learns from them. Prints JSON with the counts.
"""
import json
import os

import numpy as np
from absl import app, flags
from PIL import Image, ImageFilter
from sklearn.datasets import load_digits

from marjax.data.digits import NUM_TRAIN

OUTPUT = flags.DEFINE_string("output", None, "The folder to write (train/ and heldout/ inside).", required=True)
PER_DIGIT = flags.DEFINE_integer("per_digit", 4, "Augmented versions of each training digit.")
HELDOUT_PER_DIGIT = flags.DEFINE_integer("heldout_per_digit", 10, "Augmented versions of each held-out digit.")
SEED = flags.DEFINE_integer("seed", 0, "Seed of the random warps.")


def warped_digit(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """pixels (8, 8) in 0..16 -> a 28x28 greyscale image of the digit, randomly warped."""
    digit = Image.fromarray(np.round(pixels * (255.0 / 16.0)).astype(np.uint8)).resize((20, 20), Image.BICUBIC)
    canvas = Image.new("L", (28, 28))
    canvas.paste(digit, (4, 4))
    angle, scale = np.deg2rad(rng.uniform(-10, 10)), rng.uniform(0.9, 1.1)
    shear, (dx, dy) = rng.uniform(-0.1, 0.1), rng.uniform(-1.5, 1.5, size=2)
    forward = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ np.array(
        [[1.0, shear], [0.0, 1.0]])
    inverse = np.linalg.inv(forward)  # PIL maps output pixels back to input pixels
    centre = np.array([13.5, 13.5])
    offset = centre - inverse @ (centre + np.array([dx, dy]))
    coefficients = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    warped = canvas.transform((28, 28), Image.AFFINE, coefficients, resample=Image.BICUBIC)
    return warped.filter(ImageFilter.GaussianBlur(0.5))


def write_split(root: str, images: np.ndarray, labels: np.ndarray, per_digit: int, rng: np.random.Generator) -> int:
    """Writes `per_digit` warped versions of each digit to root/<label>/<index>_<k>.png; returns the count."""
    for c in range(10):
        os.makedirs(os.path.join(root, str(c)), exist_ok=True)
    for i, (pixels, label) in enumerate(zip(images, labels)):
        for k in range(per_digit):
            warped_digit(pixels, rng).save(os.path.join(root, str(label), f"{i:04d}_{k}.png"))
    return len(images) * per_digit


def main(argv: list[str]) -> None:
    del argv
    digits, rng = load_digits(), np.random.default_rng(SEED.value)
    counts = {
        "train": write_split(os.path.join(OUTPUT.value, "train"), digits.images[:NUM_TRAIN],
                             digits.target[:NUM_TRAIN], PER_DIGIT.value, rng),
        "heldout": write_split(os.path.join(OUTPUT.value, "heldout"), digits.images[NUM_TRAIN:],
                               digits.target[NUM_TRAIN:], HELDOUT_PER_DIGIT.value, rng),
    }
    print(json.dumps({"output": OUTPUT.value, **counts}))


if __name__ == "__main__":
    app.run(main)
