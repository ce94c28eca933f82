"""Encode a dataset once with the config's tokenizer; each process encodes its share. A KL tokenizer
writes a latent cache (`marjax.data.latent_cache`), a VQ or multi-scale VQ one a code cache
(`marjax.data.code_cache`, with LlamaGen's ten-crop as an option).

  python -m marjax.cache_tokens --config=configs/mar_large.py --output=/data/latents_kl16 \
      --config.tokenizer.checkpoint=/ckpt/kl16
  python -m marjax.cache_tokens --config=configs/llamagen_gpt.py:gpt_b --output=/data/codes_vq16 \
      --config.tokenizer.checkpoint=/ckpt/vq16 --ten_crop
"""
import copy

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from marjax.compile_cache import use_compile_cache
from marjax.config.loading import parse_flags
from marjax.data.code_cache import write_code_cache
from marjax.data.latent_cache import latent_statistics, scale_advice, write_latent_cache
from marjax.data.sources import make_source
from marjax.data.token_cache import write_labels_info
from marjax.errors import ConfigError, MarjaxError
from marjax.parallel import distributed
from marjax.tasks.registry import check_config
from marjax.tasks.token_batches import flat_codes
from marjax.tasks.tokenizer_from_config import make_tokenizer, tokenizer_spec

CONFIG = config_flags.DEFINE_config_file("config", None, "The training config (data and tokenizer sections).")
OUTPUT = flags.DEFINE_string("output", None, "Directory for the cache shards.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images encoded per call.")
TEN_CROP = flags.DEFINE_bool("ten_crop", False, "Codes only: LlamaGen's ten crops of a larger center crop per image "
                             "instead of the image and its flip.")
CROP_RANGE = flags.DEFINE_float("crop_range", 1.1, "Codes with --ten_crop: the center crop is image_size * this.")
flags.mark_flags_as_required(["config", "output"])


def source_for_cache(config: ml_collections.ConfigDict, ten_crop: bool, crop_range: float):
    """The training source, its images center-cropped to data.image_size, or to the larger
    int(image_size * crop_range) that ten-crop cuts its views from."""
    if not ten_crop:
        return make_source(config.data)
    if config.data.source == "digits":
        raise ConfigError("--ten_crop cuts its views from a larger center crop; the digits are 8x8 images upscaled "
                          "by repetition, with no larger version to crop")
    if crop_range < 1.0:
        raise ConfigError(f"--crop_range={crop_range} must be >= 1: ten crops are cut from a larger center crop")
    data = copy.deepcopy(config.data)
    data.image_size = int(config.data.image_size * crop_range)
    return make_source(data)


def main(argv: list[str]) -> None:
    del argv
    distributed.initialize_if_multiprocess()
    config: ml_collections.ConfigDict = CONFIG.value
    try:
        check_config(config)
        use_compile_cache(config.compile_cache.dir, config.compile_cache.enabled)
        discrete = tokenizer_spec(config).discrete
        if config.tokenizer.kind not in ("kl", "vq", "msvq"):
            raise ConfigError(f"tokenizer.kind={config.tokenizer.kind!r} has nothing to cache: caches hold KL "
                              "posteriors or VQ codes")
        if TEN_CROP.value and not discrete:
            raise ConfigError("--ten_crop is LlamaGen's option for codes; a latent cache holds each image and its flip")
        tokenizer = make_tokenizer(config)
        source = source_for_cache(config, TEN_CROP.value, CROP_RANGE.value)
    except MarjaxError as e:
        raise SystemExit(f"error: {e}") from e
    where = (OUTPUT.value, BATCH_SIZE.value)
    if jax.process_index() == 0:
        write_labels_info(OUTPUT.value, config.data.num_classes)
    if discrete:
        path = write_code_cache(source, lambda images: flat_codes(tokenizer.encode_codes(images)), *where,
                                image_size=config.data.image_size, ten_crop=TEN_CROP.value,
                                process_index=jax.process_index(), process_count=jax.process_count())
    else:
        path = write_latent_cache(source, tokenizer.moments, *where, jax.process_index(), jax.process_count())
        print(scale_advice(latent_statistics(path), config.tokenizer.scale))
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
