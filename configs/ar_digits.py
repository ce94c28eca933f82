"""The causal AR baselines of the MAR paper's Table 1 on the embedded digits, minutes on a CPU.

  python -m marjax.main --config=configs/ar_digits.py:raster --workdir=/tmp/marjax-ar-raster
  python -m marjax.main --config=configs/ar_digits.py:random --workdir=/tmp/marjax-ar-random

"raster" and "random" (the default is "raster"): DiffLoss on pixel tokens, as the default MAR
(`configs/digits.py`: 2x2 pixel patches of the 8x8 digits, 16 tokens), with one causal stack as
deep as that MAR's encoder and decoder together. "raster_vq" and "random_vq": a softmax head over
the codes of the digits VQ tokenizer (16x16 digits -> 8x8 codes of 256), trained first with

  python -m marjax.main --config=configs/digits_vae.py:vq --workdir=/tmp/marjax-digits-vq

and a cosine lr schedule, as AR_BASELINES.md says the cross-entropy models use.
"""
import os

from marjax.config.defaults import ar_model, base_config
from marjax.config.loading import config_argument, load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg: str | None = None):
    variant = config_argument(arg, ("raster", "random", "raster_vq", "random_vq")) or "raster"
    c = load_config_file(os.path.join(HERE, "digits.py"))
    c.task = "ar"
    c.model = ar_model()
    c.model.update(patch_size=2, width=128, depth=4, num_heads=4, diffloss_depth=3, diffloss_width=128,
                   attn_dropout=0.0, proj_dropout=0.0, order=variant.split("_")[0])
    if variant.endswith("_vq"):
        c.tokenizer = load_config_file(os.path.join(HERE, "digits_vae.py:vq")).tokenizer
        c.tokenizer.checkpoint = "/tmp/marjax-digits-vq"
        c.data.image_size = 16
        c.model.update(head="softmax", patch_size=1)
        c.train.lr_schedule = "cosine"
        defaults = base_config("ar")  # the DiffLoss settings of the pixel config do not apply
        c.train.diffusion_batch_mul = defaults.train.diffusion_batch_mul
        c.sample.clip_denoised = defaults.sample.clip_denoised
    c.sample.num_iter = base_config("ar").sample.num_iter  # unused: an AR model generates one token per step
    return c
