"""Command line: train, sample, edit an image, evaluate, or compile the train step to plan memory.

  python -m marjax.main --config=configs/digits.py --workdir=/tmp/digits
  python -m marjax.main --config=configs/digits.py --workdir=/tmp/digits --mode=sample \
      --config.sample.num_images=100 --config.sample.cfg=2.0
  python -m marjax.main --config=configs/digits.py --workdir=/tmp/digits --mode=edit \
      --config.edit.image=digit.png --config.edit.box=0,4,8,8 --config.edit.label=3
  python -m marjax.main --config=configs/digits.py --workdir=/tmp/digits --mode=eval
  XLA_FLAGS=--xla_force_host_platform_device_count=64 JAX_PLATFORMS=cpu python -m marjax.main \
      --config=configs/mar_huge.py --workdir=/tmp/plan --mode=compile --config.mesh.fsdp=64

Any config field can be overridden with --config.<section>.<field>=value; a key the config
does not have fails with the list of valid keys before anything is loaded.
"""
import logging as std_logging
import os
import sys

# Before TensorFlow loads (a TFDS data source imports it): keep its C++ start-up chatter out of the log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from marjax.compile_cache import cache_report, use_compile_cache  # noqa: E402
from marjax.compile_report import write_compile_report  # noqa: E402
from marjax.config.loading import parse_flags  # noqa: E402
from marjax.edit import edit_from_workdir  # noqa: E402
from marjax.errors import MarjaxError  # noqa: E402
from marjax.evaluate import evaluate_workdir  # noqa: E402
from marjax.parallel import distributed  # noqa: E402
from marjax.sample import sample_from_workdir  # noqa: E402
from marjax.stored_programs import store_report, use_program_store  # noqa: E402
from marjax.train import train_and_evaluate  # noqa: E402

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/digits.py.", lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "edit", "eval", "compile"],
                         "Train (and resume); sample from a workdir; edit an image with it (the config's `edit` "
                         "section); evaluate its samples (FID, IS, ...); or compile "
                         "the train step for the config's mesh and print per-device memory and FLOPs.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
    """Drops the INFO chatter of libraries that log every save phase (orbax); warnings pass."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.initialize_if_multiprocess()
    config = CONFIG.value
    try:
        folder = use_compile_cache(config.compile_cache.dir, config.compile_cache.enabled)
        logging.info("compilation cache: %s", folder or "off (compile_cache.enabled=False)")
        use_program_store(folder if config.compile_cache.store_programs else None)
        if MODE.value == "train":
            train_and_evaluate(config, WORKDIR.value)
        elif MODE.value == "sample":
            sample_from_workdir(config, WORKDIR.value)
        elif MODE.value == "edit":
            edit_from_workdir(config, WORKDIR.value)
        elif MODE.value == "eval":
            evaluate_workdir(config, WORKDIR.value)
        else:
            write_compile_report(config, WORKDIR.value)
    except (MarjaxError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    logging.info("%s; %s", cache_report(), store_report())


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
