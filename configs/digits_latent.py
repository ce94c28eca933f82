"""MAR on the latents of the digits autoencoder (`configs/digits_vae.py`): the latent path on CPU.

  python -m marjax.main --config=configs/digits_vae.py --workdir=/tmp/marjax-digits-vae
  python -m marjax.main --config=configs/digits_latent.py --workdir=/tmp/marjax-digits-latent

16x16 digits -> 8x8x4 KL latents (EMA weights of the tokenizer run's latest checkpoint) ->
16 tokens of 2x2x4; samples are decoded by the same autoencoder. Point
`tokenizer.checkpoint` elsewhere if the tokenizer run lives in another workdir.
"""
import os

from marjax.config.loading import config_argument, load_config_file


def get_config(arg: str | None = None):
    config_argument(arg)
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.py"))
    c.tokenizer = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_vae.py")).tokenizer
    c.data.image_size = 16
    c.tokenizer.checkpoint = "/tmp/marjax-digits-vae"
    c.tokenizer.scale = 0.274  # 1 / std of the digits_vae run's posterior samples over the digits (3.65)
    c.sample.clip_denoised = False  # latents have no fixed range
    return c
