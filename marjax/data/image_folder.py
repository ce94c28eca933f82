"""A directory of images as a random-access source, checked before training starts.

Labelled: `root/<class>/<image>`: classes are the sorted subfolder names (label = their index),
files sorted within a class, as torchvision's ImageFolder. Unlabelled (`num_classes=0`, an
unconditional model): every image under `root`, in class folders or not, with label 0. Symbolic
links are followed, but a folder reached twice (a link loop, or two links to one folder) is read once.

Every file is checked at construction by its header (in threads; a few seconds per 100k files
on a local disk): empty files, files that are not images (text named .png, macOS `._` files)
and decompression bombs are found before anything compiles. A file whose header is fine but
whose data is not (a truncated JPEG) is found when it is first read. Without
`skip_bad_images` either is a DataError naming the file; with it, the file is skipped and
counted in a warning.
"""
import concurrent.futures
import os
import warnings

import numpy as np
from absl import logging
from PIL import Image

from marjax.data.image_ops import center_crop
from marjax.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_SCAN_THREADS = 16
_NAMED = 10  # bad files named in a warning before "and N more"


def _header_problem(path: str) -> str | None:
    """Why `path` is not an image, judged from its size and header; None when it looks like one."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path):  # parses the header only
                pass
    except (OSError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _to_8_bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit integer greyscale scaled to 8 bits (PIL's convert("L") would saturate at 255)."""
    if not image.mode.startswith("I"):
        return image
    array = np.asarray(image, np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or array.max() <= 65535 else float(2 ** 32 - 1)
    return Image.fromarray(np.round(array * (255.0 / top)).clip(0, 255).astype(np.uint8), "L")


def _is_image(filename: str) -> bool:
    return filename.lower().endswith(IMAGE_EXTENSIONS)


def list_class_images(root: str) -> tuple[list[str], list[str], list[int], list[str]]:
    """(class names, files, labels, loose files) of `root`: the images under each class subfolder,
    following links but never a folder twice, and the images directly in `root`."""
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir()]
    loose = [e.path for e in entries if e.is_file() and _is_image(e.name)]
    files, labels, seen = [], [], set()
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name), followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:
                logging.warning("%s leads to %s, which was already read: not read again (a link loop?)", dirpath, real)
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames.sort()
            for filename in sorted(filenames):
                if _is_image(filename):
                    files.append(os.path.join(dirpath, filename))
                    labels.append(label)
    return classes, files, labels, loose


def _labelled_files(root: str, num_classes: int) -> tuple[list[str], list[str], list[int]]:
    """(class names, files, labels) to train on: `num_classes` class folders, or with num_classes 0
    every image, label 0. DataError when the folders do not match num_classes, naming both."""
    classes, files, labels, loose = list_class_images(root)
    if num_classes == 0:
        if classes:
            logging.info("data.num_classes=0: the images of %s's %d class folders are read without their labels "
                         "(an unconditional model)", root, len(classes))
        return [], loose + files, [0] * (len(loose) + len(files))
    if not classes:
        raise DataError(f"data.path={root!r} has no class subfolders (expected {root}/<class>/<image>, "
                        f"data.num_classes={num_classes}); for an unconditional model of a folder of images, set "
                        f"data.num_classes=0")
    if len(classes) != num_classes:
        raise DataError(f"data.path={root!r} has {len(classes)} class folders but data.num_classes={num_classes}: "
                        f"set data.num_classes={len(classes)} (or 0 for an unconditional model)")
    if loose:
        logging.warning("%d images directly in %s are in no class folder and are not read (e.g. %s)", len(loose),
                        root, loose[0])
    return classes, files, labels


class ImageFolderSource:
    """Record i -> {"image": (image_size, image_size, channels) uint8, "label": int32}: converted to
    RGB (or L for 1 channel) and ADM-center-cropped to `image_size`. `num_classes`: the number of
    class folders, or 0 to read every image unlabelled."""

    def __init__(self, root: str, image_size: int, channels: int = 3, num_classes: int = 0,
                 skip_bad_images: bool = False):
        if not root:
            raise DataError("data.source='image_folder' needs data.path, a directory of class subfolders (or of "
                            "images, with data.num_classes=0)")
        if not os.path.isdir(root):
            raise DataError(f"data.path={root!r}: no such directory (expected class subfolders of images)")
        classes, files, labels = _labelled_files(root, num_classes)
        with concurrent.futures.ThreadPoolExecutor(_SCAN_THREADS) as pool:
            problems = list(pool.map(_header_problem, files))
        bad = [(path, problem) for path, problem in zip(files, problems) if problem]
        if bad and not skip_bad_images:
            raise DataError(f"{bad[0][0]} is not a readable image ({bad[0][1]}); {len(bad)} such files under "
                            f"data.path={root!r}. Remove them, or skip them with --config.data.skip_bad_images=True")
        if bad:
            named = "\n  ".join(f"{path} ({problem})" for path, problem in bad[:_NAMED])
            logging.warning("skipping %d unreadable files of %s (data.skip_bad_images):\n  %s%s", len(bad), root,
                            named, f"\n  ... and {len(bad) - _NAMED} more" if len(bad) > _NAMED else "")
        good = [i for i, problem in enumerate(problems) if not problem]
        if not good:
            raise DataError(f"data.path={root!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                            f"{'under it' if num_classes == 0 else 'under its class folders'}")
        self.root = root
        self.classes = classes
        self.files = [files[i] for i in good]
        self.labels = np.asarray([labels[i] for i in good], np.int32)
        self.image_size = image_size
        self.mode = {1: "L", 3: "RGB"}[channels]
        self.skip_bad_images = skip_bad_images
        self.skipped_at_read = 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        """With skip_bad_images, a file that fails to decode is replaced by the next readable one."""
        for attempt in range(len(self.files)):
            path = self.files[(index + attempt) % len(self.files)]
            try:
                with Image.open(path) as image:
                    array = center_crop(_to_8_bit(image).convert(self.mode), self.image_size)
                return {"image": array, "label": self.labels[(index + attempt) % len(self.files)]}
            except OSError as e:
                if not self.skip_bad_images:
                    raise DataError(f"{path} cannot be decoded ({e}); remove it, or skip such files with "
                                    f"--config.data.skip_bad_images=True") from e
                self.skipped_at_read += 1
                logging.warning("skipping %s: cannot be decoded (%s); %d files skipped at read so far", path, e,
                                self.skipped_at_read)
        raise DataError(f"no file of data.path={self.root!r} can be decoded")
