"""Judges samples of a model trained on the 28x28 digit folder (`benchmarks/digit_folder.py`) with
models independent of marjax, as `marjax.digits_check` judges the 8x8 digits.

  python benchmarks/folder_check.py --folder=/tmp/digits28 --samples=WORKDIR/samples/step_N.npz

Prints JSON:
- `accuracy`: how often an RBF SVM trained on the held-out digits' images (`heldout/`, digits no
  model saw) labels a sample as the class it was requested for; `classifier_train_folder_accuracy`
  is that SVM on the training folder's images, the ceiling to compare with.
- `nearest_train_distance` / `real_nearest_train_distance`: mean Euclidean distance (0..1 pixels)
  from each sample, and from each held-out image, to its nearest image of `train/`.
- `spread` / `real_spread`: the per-pixel standard deviation within a class (0..1 pixels), averaged
  over classes (`marjax.metrics.within_class_spread`), of the samples by requested class and of `train/`: variety,
  which a low sampling temperature trades for recognition.
- `seam_ratio` / `real_seam_ratio`: the mean absolute step between neighbouring pixels across the
  borders of `--patch`-pixel tokens over that within them; patch texture shows as a ratio above
  the real images'.
"""
import glob
import json
import os

import numpy as np
from absl import app, flags
from PIL import Image
from sklearn.svm import SVC

from marjax.metrics import nearest_distance, within_class_spread

FOLDER = flags.DEFINE_string("folder", None, "The folder written by benchmarks/digit_folder.py.", required=True)
SAMPLES = flags.DEFINE_string("samples", None, "An .npz written by --mode=sample.", required=True)
PATCH = flags.DEFINE_integer("patch", 4, "The model's token size in pixels, for the seam ratio.")


def read_split(root: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 784) in 0..1, labels (N,)) of root/<class>/*.png."""
    files = sorted(glob.glob(os.path.join(root, "*", "*.png")))
    if not files:
        raise FileNotFoundError(f"{root} holds no <class>/*.png: write it with benchmarks/digit_folder.py")
    images = np.stack([np.asarray(Image.open(f).convert("L"), np.float32).reshape(-1) / 255.0 for f in files])
    return images, np.asarray([int(os.path.basename(os.path.dirname(f))) for f in files])


def seam_ratio(images: np.ndarray, patch: int) -> float:
    """images (N, H, W) -> mean |step| between horizontal and vertical neighbours across token
    borders over that within tokens."""
    steps = [np.abs(np.diff(images, axis=2)), np.abs(np.diff(images, axis=1)).transpose(0, 2, 1)]
    across = np.arange(images.shape[2] - 1) % patch == patch - 1
    return float(np.mean([s[..., across].mean() for s in steps]) / np.mean([s[..., ~across].mean() for s in steps]))


def check_folder_samples(folder: str, images: np.ndarray, labels: np.ndarray, patch: int) -> dict:
    """images (N, 28, 28[, 1]) uint8 samples, labels (N,) their requested classes -> the figures."""
    train_x, train_y = read_split(os.path.join(folder, "train"))
    heldout_x, heldout_y = read_split(os.path.join(folder, "heldout"))
    samples = np.asarray(images, np.float32).reshape(len(images), -1) / 255.0
    if samples.shape[1] != train_x.shape[1]:
        raise ValueError(f"samples are {images.shape[1:]}, the folder's images 28x28")
    classifier = SVC(gamma="scale").fit(heldout_x, heldout_y)
    side = int(np.sqrt(samples.shape[1]))
    return {
        "num_samples": len(samples),
        "accuracy": float((classifier.predict(samples) == np.asarray(labels)).mean()),
        "classifier_train_folder_accuracy": float(classifier.score(train_x, train_y)),
        "nearest_train_distance": nearest_distance(samples, train_x),
        "real_nearest_train_distance": nearest_distance(heldout_x, train_x),
        "spread": within_class_spread(samples, np.asarray(labels)),
        "real_spread": within_class_spread(train_x, train_y),
        "seam_ratio": seam_ratio(samples.reshape(-1, side, side), patch),
        "real_seam_ratio": seam_ratio(heldout_x.reshape(-1, side, side), patch),
    }


def main(argv: list[str]) -> None:
    del argv
    with np.load(SAMPLES.value) as data:
        print(json.dumps(check_folder_samples(FOLDER.value, data["images"], data["labels"], PATCH.value), indent=1))


if __name__ == "__main__":
    app.run(main)
