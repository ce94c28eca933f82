"""Encode a dataset once with the config's KL tokenizer (see `marjax.data.latent_cache`); each
process encodes its share.

  python -m marjax.cache_tokens --config=configs/mar_large.py --output=/data/latents_kl16 \
      --config.tokenizer.checkpoint=/ckpt/kl16
"""
import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from marjax.config.loading import parse_flags
from marjax.data.latent_cache import write_latent_cache
from marjax.data.sources import make_source
from marjax.errors import ConfigError, MarjaxError
from marjax.parallel import distributed
from marjax.tasks.registry import check_config
from marjax.tasks.tokenizer_from_config import make_tokenizer
from marjax.tokenizers.kl import KLTokenizer

CONFIG = config_flags.DEFINE_config_file("config", None, "The training config (data and tokenizer sections).")
OUTPUT = flags.DEFINE_string("output", None, "Directory for the cache shards.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images encoded per call.")
flags.mark_flags_as_required(["config", "output"])


def main(argv: list[str]) -> None:
    del argv
    distributed.initialize_if_multiprocess()
    config: ml_collections.ConfigDict = CONFIG.value
    try:
        check_config(config)
        tokenizer = make_tokenizer(config)
        if not isinstance(tokenizer, KLTokenizer):
            raise ConfigError("latent caching stores KL posteriors: set tokenizer.kind='kl' and tokenizer.checkpoint")
        source = make_source(config.data)
    except MarjaxError as e:
        raise SystemExit(f"error: {e}") from e
    path = write_latent_cache(source, tokenizer.moments, OUTPUT.value, BATCH_SIZE.value, jax.process_index(),
                              jax.process_count())
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
