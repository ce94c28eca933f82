"""Labels, grids and files of `--mode=sample`."""
import numpy as np
import pytest
from PIL import Image

from marjax.data.class_labels import sample_labels
from marjax.image_files import LABEL_MARGIN, class_rows, grid_columns, image_grid, write_samples


def test_sample_labels_balanced_sorted_and_checked():
    np.testing.assert_array_equal(sample_labels(7, 3), [0, 0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(sample_labels(4, 10, "7, 2"), [7, 7, 2, 2])
    with pytest.raises(ValueError, match="class ids"):
        sample_labels(4, 10, "10")


def test_image_grid_places_images_row_major_with_borders():
    images = np.arange(1, 6, dtype=np.uint8)[:, None, None, None] * np.ones((5, 2, 3, 1), np.uint8)
    grid = image_grid(images, columns=3)
    assert grid.shape == (2 * 3, 3 * 4, 1)
    assert grid[0, 0, 0] == 1 and grid[0, 4, 0] == 2 and grid[0, 8, 0] == 3 and grid[3, 0, 0] == 4
    assert grid[2, 0, 0] == 128 and grid[0, 3, 0] == 128
    assert grid[3, 8, 0] == 0  # the blank sixth cell


def test_write_samples_png_and_npz(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    labels = np.array([0, 0, 0, 1, 1, 1], np.int32)
    assert grid_columns(labels) == 3
    png = write_samples(str(tmp_path), "step_5", images, labels)
    with Image.open(png) as grid:
        picture = np.asarray(grid)
    assert picture.shape[1] >= 512 + LABEL_MARGIN and picture.shape[0] >= 256
    # one row per class: the class id written in the white margin beside each of the two rows
    margin = picture[:, :LABEL_MARGIN]
    half = picture.shape[0] // 2
    assert (margin[:half] < 128).any() and (margin[half:] < 128).any() and (margin > 250).mean() > 0.8
    data = np.load(tmp_path / "step_5.npz")
    np.testing.assert_array_equal(data["images"], images)
    np.testing.assert_array_equal(data["labels"], labels)


def test_rows_are_labelled_only_when_each_holds_one_class():
    assert class_rows(np.array([3, 3, 7, 7]), 2) == ["3", "7"]
    assert class_rows(np.array([3, 7, 7, 7]), 2) is None
    assert class_rows(np.array([3, 3, 3]), 2) is None
