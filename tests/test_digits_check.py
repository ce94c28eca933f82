"""The independent digit-quality check, on inputs whose answer is known."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

from marjax.digits_check import check_digits


def real_as_samples(rows: slice) -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    images = np.round(digits.images[rows] * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, digits.target[rows]


def test_real_heldout_digits_score_like_real_digits():
    images, labels = real_as_samples(slice(1500, None))
    figures = check_digits(images, labels)
    assert figures["accuracy"] == pytest.approx(figures["classifier_heldout_accuracy"], abs=0.01)
    assert figures["accuracy"] > 0.9
    assert figures["spread"] == pytest.approx(figures["real_spread"], rel=0.15)
    assert figures["nearest_train_distance"] == pytest.approx(figures["real_nearest_train_distance"], rel=0.05)


def test_wrong_labels_and_copies_are_caught():
    images, labels = real_as_samples(slice(1500, None))
    assert check_digits(images, (labels + 1) % 10)["accuracy"] < 0.1
    copies, copy_labels = real_as_samples(slice(0, 300))
    assert check_digits(copies, copy_labels)["nearest_train_distance"] < 0.5
    one_per_class = np.concatenate([copies[copy_labels == c][:1].repeat(20, 0) for c in range(10)])
    assert check_digits(one_per_class, np.repeat(np.arange(10), 20))["spread"] < 0.2


def test_upscaled_digits_are_pooled_back():
    images, labels = real_as_samples(slice(1500, None))
    big = images.repeat(2, axis=1).repeat(2, axis=2)
    assert check_digits(big, labels) == check_digits(images, labels)
    with pytest.raises(ValueError, match="side 8k"):
        check_digits(images[:, :7], labels)


def test_unlabelled_samples_report_the_classes_they_cover():
    images, labels = real_as_samples(slice(1500, None))
    figures = check_digits(images, None)
    assert "accuracy" not in figures
    fractions = np.array([figures["predicted_class_fractions"][c] for c in range(10)])
    assert fractions.sum() == pytest.approx(1.0) and np.abs(fractions - np.bincount(labels) / len(labels)).max() < 0.03
    only_threes = check_digits(images[labels == 3], None)["predicted_class_fractions"]
    assert max(only_threes, key=only_threes.get) == 3 and only_threes[3] > 0.6  # the SVM's held-out 3s: 77%
