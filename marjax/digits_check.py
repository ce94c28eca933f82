"""Judges digit samples with models independent of marjax: are they the requested digits, and varied?

  python -m marjax.digits_check --samples=/tmp/marjax-digits/samples/step_2996.npz

Reads an `.npz` written by `--mode=sample` (images (N, 8k, 8k, 1) uint8, labels (N,)) and prints
JSON with the figures below. Samples of an unconditional model (no labels in the file) have no
requested class: their `accuracy` fields are replaced by `predicted_class_fractions`, how often the
SVM sees each digit (about 0.1 each when the model covers the classes as the data does), and
`spread` is taken within the predicted classes.
- `accuracy`: how often an RBF SVM trained on real digits (the first 1,500) labels a sample as
  the class it was requested for; `classifier_heldout_accuracy` is that SVM on the 297 real
  digits it did not see, the ceiling to compare with.
- `spread` / `real_spread`: the per-pixel standard deviation within a class, averaged over
  pixels and classes (0..16 pixel units), for the samples and for real digits. Near-equal
  values mean samples vary within a class as much as real digits do.
- `nearest_train_distance` / `real_nearest_train_distance`: mean Euclidean distance from each
  sample (and each held-out real digit) to its nearest training digit; a sample far below the
  real figure would be a copy of the training set.
"""
import json

import numpy as np
from absl import app, flags
from sklearn.datasets import load_digits
from sklearn.svm import SVC

from marjax.data.digits import NUM_TRAIN, digit_pixels
from marjax.metrics import nearest_distance, within_class_spread


def check_digits(images: np.ndarray, labels: np.ndarray | None) -> dict:
    """images: (N, 8k, 8k[, 1]) uint8 in 0..255; labels: (N,) requested classes, or None for an
    unconditional model's samples. -> figures."""
    pixels = digit_pixels(np.asarray(images))
    digits = load_digits()
    train_x, train_y = digits.data[:NUM_TRAIN], digits.target[:NUM_TRAIN]
    heldout_x, heldout_y = digits.data[NUM_TRAIN:], digits.target[NUM_TRAIN:]
    classifier = SVC(gamma=0.001).fit(train_x, train_y)
    predicted = classifier.predict(pixels)
    if labels is None:
        classes = {"predicted_class_fractions": {c: float((predicted == c).mean()) for c in range(10)}}
    else:
        labels = np.asarray(labels)
        classes = {"accuracy": float((predicted == labels).mean()),
                   "per_class_accuracy": {int(c): float((predicted[labels == c] == c).mean())
                                          for c in np.unique(labels)}}
    return {
        "num_samples": int(len(pixels)),
        **classes,
        "classifier_heldout_accuracy": float(classifier.score(heldout_x, heldout_y)),
        "spread": within_class_spread(pixels, predicted if labels is None else labels),
        "real_spread": within_class_spread(digits.data, digits.target),
        "nearest_train_distance": nearest_distance(pixels, train_x),
        "real_nearest_train_distance": nearest_distance(heldout_x, train_x),
    }


SAMPLES = flags.DEFINE_string("samples", None, "An .npz written by --mode=sample (required).")


def main(argv: list[str]) -> None:
    del argv
    with np.load(SAMPLES.value) as data:
        print(json.dumps(check_digits(data["images"], data["labels"] if "labels" in data else None), indent=1))


if __name__ == "__main__":
    flags.mark_flag_as_required("samples")  # here, so that importing check_digits requires nothing
    app.run(main)
