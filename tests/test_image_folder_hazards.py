"""Image folders as users have them: link loops, 16-bit PNGs and files that are not images."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from marjax.data.image_folder import ImageFolderSource
from marjax.errors import DataError


def _png(path, value: int = 100, size: int = 8) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


@pytest.fixture
def two_classes(tmp_path):
    for cls in ("a", "b"):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png", 60 * i + 10)
    return tmp_path


def test_a_symlink_loop_is_read_once(two_classes):
    os.symlink(two_classes / "a", two_classes / "a" / "loop")
    os.symlink(two_classes / "a", two_classes / "b" / "also_a")  # another class's link: read once too
    source = ImageFolderSource(str(two_classes), 8, channels=1, num_classes=2)
    assert len(source) == 6 and list(source.labels) == [0, 0, 0, 1, 1, 1]


def test_16_bit_pngs_are_scaled_not_saturated(tmp_path):
    os.makedirs(tmp_path / "a")
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "a" / "half.png")
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "a" / "white.png")
    source = ImageFolderSource(str(tmp_path), 8, channels=1, num_classes=1)
    assert int(source[0]["image"][0, 0, 0]) == 128 and int(source[1]["image"][0, 0, 0]) == 255


def _truncated_jpeg(path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) * 2 // 3])  # header intact, data cut


BAD_FILES = {
    "empty": (lambda p: p.write_bytes(b""), "0.png"),
    "text named .png": (lambda p: p.write_text("hello"), "0.png"),
    "AppleDouble": (lambda p: (p.parent / "._0.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60)), "._0.png"),
    "decompression bomb": (lambda p: Image.new("1", (20000, 20000)).save(p), "0.png"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_file_that_is_not_an_image_is_named_at_start_or_skipped(two_classes, kind):
    make, name = BAD_FILES[kind]
    make(two_classes / "b" / "0.png")
    with pytest.raises(DataError, match=f"b/{name} is not a readable image .*skip_bad_images=True"):
        ImageFolderSource(str(two_classes), 8, channels=1, num_classes=2)
    source = ImageFolderSource(str(two_classes), 8, channels=1, num_classes=2, skip_bad_images=True)
    assert len(source) == (6 if kind == "AppleDouble" else 5)
    assert all(source[i]["image"].shape == (8, 8, 1) for i in range(len(source)))


def test_a_truncated_jpeg_is_named_at_first_read_or_skipped(two_classes):
    _truncated_jpeg(two_classes / "b" / "1.jpg")
    source = ImageFolderSource(str(two_classes), 8, channels=1, num_classes=2)  # its header is fine
    index = source.files.index(str(two_classes / "b" / "1.jpg"))
    with pytest.raises(DataError, match="b/1.jpg cannot be decoded"):
        source[index]
    skipping = ImageFolderSource(str(two_classes), 8, channels=1, num_classes=2, skip_bad_images=True)
    record = skipping[index]
    assert skipping.skipped_at_read == 1 and int(record["label"]) == int(skipping.labels[index + 1])
