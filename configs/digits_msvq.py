"""A small VAR-style multi-scale VQ tokenizer on the embedded digits (16x16, 1 channel -> token maps
1x1, 2x2, 3x3, 4x4 of a 128 x 8 codebook), the tokenizer of a VAR on the digits.

  python -m marjax.main --config=configs/digits_msvq.py --workdir=/tmp/marjax-digits-msvq

Reconstruction grids (original, EMA reconstruction) are written to <workdir>/samples; codebook
usage per scale (usage_s<k>, perplexity_s<k>) and dead codes revived are logged. A VAR run reads
the tokenizer with `--config.tokenizer.checkpoint=<that workdir>`.
"""
import os

from marjax.config.loading import config_argument, load_config_file


def get_config(arg: str | None = None):
    config_argument(arg)
    # The digits autoencoder's data and recipe (configs/digits_vae.py), VAR's quantizer.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_vae.py"))
    c.tokenizer.kind = "msvq"
    c.tokenizer.update(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, codebook_size=128, code_dim=8,
                       patch_nums=(1, 2, 3, 4), num_phis=4, reconstruction="l2")
    # Not VAR's: codes counted below 3% of a uniform share are re-initialised every 100 steps.
    c.tokenizer.dead_code_every = 100
    c.tokenizer.dead_code_threshold = 0.03
    c.train.log_every_steps = 50
    c.train.sample_every_steps = 250
    return c
