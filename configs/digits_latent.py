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
    # A 3,000-step DiffLoss predicts x_0 poorly at the high-noise steps, where the cosine schedule
    # multiplies its errors up to ~1/sqrt(alpha_bar): unclipped, every sampled latent runs away
    # (std ~1,300 against the data's 1.0) and the decoded digits are speckled. Real scaled latents
    # lie within about +-3.5; clipping x_0 at +-5 keeps the reverse process on the data's range
    # (BENCHMARKS.md "Sample quality beyond the 8x8 digits").
    c.sample.clip_denoised = True
    c.sample.clip_range = 5.0
    return c
