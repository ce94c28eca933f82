"""Code caching: encode a dataset once with a VQ tokenizer, then train on the cached codes (VQ-GPT,
VAR, the softmax heads of MAR and the AR baselines), as LlamaGen's extract_codes_c2i.py does.

  python -m marjax.cache_tokens --config=configs/llamagen_gpt.py:gpt_b --output=/data/codes_vq16 \
      --config.tokenizer.checkpoint=/ckpt/vq16 [--ten_crop]
  python -m marjax.main --config=configs/llamagen_gpt.py:gpt_b --workdir=/ckpt/my_gpt_b \
      --config.data.source=cached_codes --config.data.path=/data/codes_vq16 \
      --config.tokenizer.checkpoint=/ckpt/vq16

Each record holds the codes of A augmentations of one image, (A, L) int32 with L the tokens of
one image flattened (a multi-scale tokenizer's scales one after another): A = 2, the center crop
and its horizontal flip; or with ten-crop A = 10, LlamaGen's: the image center-cropped to
int(image_size * crop_range) (1.1), then torchvision's TenCrop of image_size (corners top-left,
top-right, bottom-left, bottom-right, center; then the same of the flipped image). Training draws
one augmentation per record and step (`data.random_flip`; else always the first).
"""
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from marjax.data.image_ops import to_model_range
from marjax.data.token_cache import CachedTokenSource, write_token_cache

PREFIX = "codes"


class CachedCodeSource(CachedTokenSource):
    """Records of a code cache: {"codes": (A, L) int32, "label": int32}."""

    def __init__(self, directory: str, num_classes: int = 0):
        super().__init__(directory, PREFIX, "code", num_classes)


def five_crops(images: np.ndarray, size: int) -> list[np.ndarray]:
    """(B, S, S, C) -> torchvision's five_crop of `size`: top-left, top-right, bottom-left,
    bottom-right, center (its top and left offsets int(round((S - size) / 2)))."""
    s = images.shape[1]
    center = int(round((s - size) / 2.0))
    corners = [(0, 0), (0, s - size), (s - size, 0), (s - size, s - size), (center, center)]
    return [images[:, top:top + size, left:left + size] for top, left in corners]


def augmentations(images: np.ndarray, size: int, ten_crop: bool) -> list[np.ndarray]:
    """(B, S, S, C) uint8 -> the A views of each image, each (B, size, size, C): [images, their flips]
    (S = size), or ten-crop's ten (S = int(size * crop_range))."""
    flipped = images[:, :, ::-1]
    if not ten_crop:
        return [images, flipped]
    return five_crops(images, size) + five_crops(flipped, size)


def write_code_cache(source: Sequence[dict], codes_fn: Callable[[jax.Array], jax.Array], output: str,
                     batch_size: int, image_size: int, ten_crop: bool = False, process_index: int = 0,
                     process_count: int = 1) -> str:
    """Encodes the augmentations of records `process_index::process_count` of `source` into one shard.

    source: records whose images are image_size square, or with `ten_crop` the larger center crop
    to cut ten views of image_size from. codes_fn: (B, image_size, image_size, C) images in [-1, 1] ->
    (B, L) int codes (`marjax.tasks.token_batches.flat_codes` of a tokenizer's codes). Returns the
    shard's path.
    """
    def encode(images: np.ndarray) -> list[dict]:
        views = np.stack([np.asarray(codes_fn(jnp.asarray(to_model_range(v))), np.int32)
                          for v in augmentations(images, image_size, ten_crop)], axis=1)
        return [{"codes": codes} for codes in views]

    return write_token_cache(source, encode, output, PREFIX, batch_size, process_index, process_count)
