"""MAR on your own small folder of images, in pixels, in about 10 minutes on a laptop CPU.

  python -m marjax.main --config=configs/folder.py --workdir=/tmp/my-folder --config.data.path=/data/my_images

The digits default (`configs/digits.py`) at 28x28 in 4x4 patches (49 tokens of 16 values per
channel), with the two fixes a short run needs (BENCHMARKS.md "Sample quality beyond the 8x8
digits"): an EMA warm-up, without which the EMA still holds the initial weights and the grids
look like noise for the first thousands of steps, and sampling at temperature 0.8, which
on the 28x28 digits lifted recognition from 86% to 94% and brought samples 1.4x -> 1.3x as close
to the training images as real held-out ones.

Unconditional by default (`data.num_classes=0`: every image under data.path, in subfolders or
not). For class subfolders: `--config.data.num_classes=<their count> --config.sample.cfg=2.0`.
Greyscale images: `--config.data.channels=1`. The warm-up of the lr is 3.5 epochs: on a folder
of more than ~40,000 images, lower `train.warmup_epochs` so that it ends within the 2,400 steps.
"""
import os

from marjax.config.loading import config_argument, load_config_file


def get_config(arg: str | None = None):
    config_argument(arg)
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.py"))
    c.data.update(source="image_folder", path="", image_size=28, channels=3, num_classes=0)
    c.model.patch_size = 4
    c.train.num_steps = 2_400
    c.train.ema_warmup = True
    c.train.checkpoint_every_steps = 800
    c.train.sample_every_steps = 800
    c.sample.update(cfg=1.0, temperature=0.8)
    c.eval.feature_network = "inception"  # the digits network judges 8x8 digits only
    return c
