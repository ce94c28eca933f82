"""Random-access image sources: record i -> {"image": (H, W, C) uint8, "label": int32}.

Each source fails at construction, before anything compiles, with a message saying what the
user has to provide. Nothing is downloaded.
"""
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from marjax.data.digits import DigitsSource
from marjax.data.image_folder import ImageFolderSource
from marjax.data.image_ops import center_crop
from marjax.data.code_cache import CachedCodeSource
from marjax.data.latent_cache import CachedLatentSource
from marjax.errors import DataError


class TfdsSource:
    """A TFDS dataset prepared by the user in ArrayRecord format, read through `tfds.data_source`.

    Its "image" feature is ADM-center-cropped to `image_size`; "label" is the class.
    """

    def __init__(self, name: str, split: str, image_size: int, data_dir: str | None = None):
        import tensorflow as tf  # seconds to import: only runs that read TFDS pay it
        import tensorflow_datasets as tfds

        tf.config.set_visible_devices([], "GPU")  # keep TensorFlow off the accelerators JAX uses

        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise DataError(f"data.tfds_name={name!r} is not a TFDS dataset") from e
        if not builder.is_prepared():
            raise DataError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir}. Prepare it once with\n"
                f"  tfds build {name} --file_format=array_record"
                + (f" --data_dir={data_dir}" if data_dir else "")
                + f"\n(for imagenet2012, first place the ILSVRC2012 train/val tar files in "
                  f"{os.path.join(data_dir or '~/tensorflow_datasets', 'downloads', 'manual')}), "
                  f"or point data.tfds_data_dir at the directory holding it.")
        if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
            raise DataError(f"TFDS dataset {name!r} in {builder.data_dir} is stored as "
                            f"{builder.info.file_format}; random access needs ArrayRecord: rebuild with "
                            f"`tfds build {name} --file_format=array_record`")
        self.source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        record = self.source[index]
        image = Image.fromarray(np.asarray(record["image"]).squeeze())
        return {"image": center_crop(image.convert("RGB"), self.image_size),
                "label": np.int32(record["label"])}


class UnlabelledSource:
    """A source's records with every "label" 0, the null class of an unconditional model."""

    def __init__(self, source: Sequence[dict]):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        return {**self.source[index], "label": np.int32(0)}


def make_source(data_config) -> Sequence[dict]:
    """The source named by `config.data.source` ("digits", "image_folder", "tfds", "cached_latents",
    "cached_codes"); with data.num_classes 0 its labels are all 0 (an unconditional model)."""
    kind = data_config.source
    if kind == "image_folder":
        return ImageFolderSource(data_config.path, data_config.image_size, data_config.channels,
                                 data_config.num_classes, data_config.skip_bad_images)
    source = _labelled_source(data_config)
    return UnlabelledSource(source) if data_config.num_classes == 0 else source


def _labelled_source(data_config) -> Sequence[dict]:
    kind = data_config.source
    if kind == "digits":
        if data_config.channels != 1 or data_config.num_classes not in (0, 10):
            raise DataError("digits have 1 channel and 10 classes: set data.channels=1, data.num_classes=10 (or 0 "
                            "for an unconditional model)")
        return DigitsSource(data_config.image_size)
    if kind == "tfds":
        if data_config.channels != 3:
            raise DataError("TFDS image sources are read as RGB: set data.channels=3")
        return TfdsSource(data_config.tfds_name, data_config.split, data_config.image_size,
                          data_config.tfds_data_dir)
    if kind == "cached_latents":
        return CachedLatentSource(data_config.path, data_config.num_classes)
    if kind == "cached_codes":
        return CachedCodeSource(data_config.path, data_config.num_classes)
    raise DataError(f"unknown data.source {kind!r}; choose 'digits', 'image_folder', 'tfds', 'cached_latents' or "
                    f"'cached_codes'")
