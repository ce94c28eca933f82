"""Command line of latent caching (see `marjax.latent_cache`): each process encodes its share.

  python -m marjax.cache_latents --config=configs/mar_large.py --output=/data/latents_kl16 \
      --config.tokenizer.checkpoint=/ckpt/kl16
"""
import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from marjax import config_checks
from marjax.data.sources import DataError
from marjax.latent_cache import write_latent_cache

CONFIG = config_flags.DEFINE_config_file("config", None, "The training config (data and tokenizer sections).")
OUTPUT = flags.DEFINE_string("output", None, "Directory for the cache shards.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images encoded per call.")
flags.mark_flags_as_required(["config", "output"])


def main(argv: list[str]) -> None:
    del argv
    from marjax import distributed
    from marjax.data.sources import make_source
    from marjax.tokenizers import KLTokenizer, make_tokenizer

    distributed.initialize_if_multiprocess()
    config: ml_collections.ConfigDict = CONFIG.value
    try:
        config_checks.validate(config)
        tokenizer = make_tokenizer(config)
        if not isinstance(tokenizer, KLTokenizer):
            raise config_checks.ConfigError("latent caching needs a learned tokenizer (tokenizer.name 'kl16' or 'vae')")
        source = make_source(config.data)
    except (config_checks.ConfigError, DataError) as e:
        raise SystemExit(f"error: {e}") from e
    path = write_latent_cache(source, tokenizer.model, tokenizer.params, OUTPUT.value, BATCH_SIZE.value,
                              jax.process_index(), jax.process_count())
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main, flags_parser=config_checks.parse_flags)
