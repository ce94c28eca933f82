"""MAR with the softmax head on the digits VQ tokenizer's codes: the MAR paper's CrossEnt column
(MaskGIT-like: random order, bidirectional attention, cross-entropy on the masked codes).

  python -m marjax.main --config=configs/digits_vae.py:vq --workdir=/tmp/marjax-digits-vq
  python -m marjax.main --config=configs/mar_digits_vq.py --workdir=/tmp/marjax-mar-vq

The default MAR (`configs/digits.py`) with 16x16 digits as 8x8 codes of 256, a cosine lr schedule
(AR_BASELINES.md: the cross-entropy models' schedule), 16 sampling steps choosing the tokens to keep
by the random order; `--config.sample.choice=confidence` keeps the most confident ones (MaskGIT).
"""
import os

from marjax.config.defaults import base_config
from marjax.config.loading import config_argument, load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg: str | None = None):
    config_argument(arg)
    c = load_config_file(os.path.join(HERE, "digits.py"))
    c.tokenizer = load_config_file(os.path.join(HERE, "digits_vae.py:vq")).tokenizer
    c.tokenizer.checkpoint = "/tmp/marjax-digits-vq"
    c.data.image_size = 16
    c.model.update(head="softmax", patch_size=1)
    c.train.lr_schedule = "cosine"
    defaults = base_config("mar")  # the DiffLoss settings of the pixel config do not apply
    c.train.diffusion_batch_mul = defaults.train.diffusion_batch_mul
    c.sample.clip_denoised = defaults.sample.clip_denoised
    c.sample.num_iter = 16
    return c
