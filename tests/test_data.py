"""Data sources, the reference center crop, and the grain pipeline's sharding and resumption."""
import os

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from marjax.data.image_ops import center_crop, to_model_range, to_uint8
from marjax.data.pipeline import make_dataset
from marjax.data.digits import DigitsSource, load_digit_arrays
from marjax.data.image_folder import ImageFolderSource
from marjax.data.sources import TfdsSource
from marjax.errors import DataError


def test_digits_source_maps_0_16_onto_0_255():
    source = DigitsSource()
    assert len(source) == 1797
    record = source[0]
    assert record["image"].shape == (8, 8, 1) and record["image"].dtype == np.uint8
    assert record["label"] == 0
    values = np.unique(np.stack([source[i]["image"] for i in range(100)]))
    assert values.min() == 0 and values.max() == 255 and len(values) <= 17


def test_the_digits_are_read_exactly_as_scikit_learn_loads_them():
    """Read from scikit-learn's packaged file without importing it; the same arrays as load_digits."""
    images, targets = load_digit_arrays()
    digits = load_digits()
    np.testing.assert_array_equal(images, digits.images)
    np.testing.assert_array_equal(targets, digits.target)


def test_center_crop_halves_with_box_then_bicubic_then_crops():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (410, 620, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    out = center_crop(image, 100)
    # 620x410 -> BOX 310x205 (205 >= 200) -> BOX 155x102 -> BICUBIC 152x100 -> crop columns 26..126.
    expected = image.resize((310, 205), Image.BOX).resize((155, 102), Image.BOX)
    expected = np.asarray(expected.resize((152, 100), Image.BICUBIC))[:, 26:126]
    np.testing.assert_array_equal(out, expected)
    assert out.shape == (100, 100, 3)


def test_model_range_round_trip():
    pixels = np.arange(256, dtype=np.uint8)
    scaled = to_model_range(pixels)
    assert scaled.min() == -1.0 and scaled.max() == 1.0
    np.testing.assert_array_equal(to_uint8(scaled), pixels)


def _write_folder(root, sizes):
    for cls, (w, h) in zip(["b_cat", "a_dog", "c_fox"], sizes):
        os.makedirs(root / cls)
        for i in range(2):
            Image.fromarray(np.full((h, w, 3), 40 * i + 10, np.uint8)).save(root / cls / f"{i}.png")
    (root / "a_dog" / "notes.txt").write_text("not an image")


def test_image_folder_labels_sorted_classes_and_crops_any_size(tmp_path):
    _write_folder(tmp_path, [(40, 30), (64, 64), (17, 90)])
    source = ImageFolderSource(str(tmp_path), image_size=16, num_classes=3)
    assert source.classes == ["a_dog", "b_cat", "c_fox"] and len(source) == 6
    assert [int(source[i]["label"]) for i in range(6)] == [0, 0, 1, 1, 2, 2]
    for i in range(6):
        assert source[i]["image"].shape == (16, 16, 3)
    assert np.all(source[1]["image"] == 50)


def test_an_unlabelled_folder_reads_every_image_with_label_0(tmp_path):
    _write_folder(tmp_path, [(40, 30), (64, 64), (17, 90)])
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "loose.png")
    source = ImageFolderSource(str(tmp_path), image_size=16, num_classes=0)
    assert len(source) == 7 and source.files[0] == str(tmp_path / "loose.png")
    assert {int(source[i]["label"]) for i in range(7)} == {0}


def test_a_labelled_folder_names_the_images_outside_its_class_folders(tmp_path, caplog):
    _write_folder(tmp_path, [(40, 30), (64, 64), (17, 90)])
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "loose.png")
    with caplog.at_level("WARNING"):
        assert len(ImageFolderSource(str(tmp_path), image_size=16, num_classes=3)) == 6
    assert "1 images directly in" in caplog.text and "loose.png" in caplog.text


def _flat_folder(root):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "0.png")
    return root


@pytest.mark.parametrize("make, message", [
    (lambda p: ImageFolderSource(str(p / "missing"), 16), "no such directory"),
    (lambda p: ImageFolderSource(str(_flat_folder(p)), 16, num_classes=10),
     "has no class subfolders .*data.num_classes=10.*set data.num_classes=0"),
    (lambda p: ImageFolderSource(str(p), 16, num_classes=0), "no image files"),
    (lambda p: _write_folder(p, [(8, 8)] * 3) or ImageFolderSource(str(p), 16, num_classes=10),
     "has 3 class folders but data.num_classes=10: set data.num_classes=3"),
    (lambda p: ImageFolderSource("", 16), "needs data.path"),
])
def test_image_folder_errors(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        make(tmp_path)


def test_tfds_not_prepared_says_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match="tfds build imagenet2012 --file_format=array_record"):
        TfdsSource("imagenet2012", "train", 256, data_dir=str(tmp_path))
    assert not any(tmp_path.iterdir()), "nothing may be downloaded or prepared"


def test_tfds_source_reads_a_prepared_array_record_dataset(tmp_path):
    import tensorflow_datasets as tfds

    class TinyImages(tfds.core.GeneratorBasedBuilder):
        """Six solid images of sizes 20..25 x 30; value 10 i, label i % 3."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(num_classes=3)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(6):
                yield i, {"image": np.full((20 + i, 30, 3), 10 * i, np.uint8), "label": i % 3}

    TinyImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    source = TfdsSource("tiny_images", "train", 16, data_dir=str(tmp_path))
    records = [source[i] for i in range(len(source))]
    assert len(records) == 6 and all(r["image"].shape == (16, 16, 3) for r in records)
    assert sorted((int(r["image"][0, 0, 0]) // 10, int(r["label"])) for r in records) == [(i, i % 3) for i in range(6)]


def _labels(iterator, batches):
    return np.concatenate([next(iterator)["labels"] for _ in range(batches)])


def _indexed_source(n):
    """Records whose label is their index (via a digits-like dict)."""
    return [{"image": np.full((2, 2, 1), i % 256, np.uint8), "label": np.int32(i)} for i in range(n)]


def test_process_shards_are_disjoint_and_cover_an_epoch():
    source = _indexed_source(40)
    seen = [_labels(iter(make_dataset(source, global_batch_size=8, seed=3, random_flip=False,
                                      process_index=p, process_count=2)), 5) for p in range(2)]
    assert set(seen[0]) | set(seen[1]) == set(range(40))
    assert not set(seen[0]) & set(seen[1])
    assert all(s % 2 == p for p in range(2) for s in seen[p])


def test_iterator_state_resumes_the_same_batches():
    source = _indexed_source(30)
    dataset = make_dataset(source, global_batch_size=4, seed=0, random_flip=True)
    first = iter(dataset)
    _labels(first, 3)
    state = first.get_state()
    expected = [next(first) for _ in range(10)]  # crosses an epoch boundary (7 batches per epoch)
    resumed = iter(make_dataset(source, global_batch_size=4, seed=0, random_flip=True))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["labels"], want["labels"])
        np.testing.assert_array_equal(got["images"], want["images"])
    assert expected[0]["images"].dtype == np.float32


def test_epochs_are_reshuffled_and_seeded():
    source = _indexed_source(16)
    epochs = _labels(iter(make_dataset(source, global_batch_size=16, seed=1, random_flip=False)), 2)
    assert sorted(epochs[:16]) == list(range(16)) and not np.array_equal(epochs[:16], epochs[16:])
    again = _labels(iter(make_dataset(source, global_batch_size=16, seed=1, random_flip=False)), 2)
    np.testing.assert_array_equal(epochs, again)


def test_flip_mirrors_about_half_the_images():
    images = np.zeros((64, 2, 2, 1), np.uint8)
    images[:, :, 0] = 255
    source = [{"image": im, "label": np.int32(0)} for im in images]
    batch = next(iter(make_dataset(source, global_batch_size=64, seed=0, random_flip=True)))["images"]
    flipped = batch[:, 0, 1, 0] == 1.0
    assert 16 < flipped.sum() < 48
    assert np.all(batch[~flipped, :, 0] == 1.0) and np.all(batch[flipped, :, 1] == 1.0)
