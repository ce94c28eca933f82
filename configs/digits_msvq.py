"""A small VAR-style multi-scale VQ tokenizer on the embedded digits (16x16, 1 channel -> token maps
1x1, 2x2, 3x3, 4x4 of a 128 x 8 codebook), the tokenizer of a VAR on the digits.

  python -m marjax.main --config=configs/digits_msvq.py --workdir=/tmp/marjax-digits-msvq

Reconstruction grids (original, EMA reconstruction) are written to <workdir>/samples; codebook
usage per scale (usage_s<k>, perplexity_s<k>) and dead codes revived are logged. A VAR run reads
the tokenizer with `--config.tokenizer.checkpoint=<that workdir>`.
"""
from marjax.config.defaults import base_config
from marjax.config.loading import config_argument


def get_config(arg: str | None = None):
    config_argument(arg)
    c = base_config()
    c.task = "tokenizer"
    c.data.source = "digits"
    c.data.image_size = 16
    c.data.channels = 1
    c.data.num_classes = 10
    c.data.random_flip = False
    c.tokenizer.kind = "msvq"
    c.tokenizer.update(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, codebook_size=128, code_dim=8,
                       patch_nums=(1, 2, 3, 4), num_phis=4, reconstruction="l2", disc_ndf=32, disc_layers=2,
                       disc_start=1000)
    # Not VAR's: codes counted below 3% of a uniform share are re-initialised every 100 steps.
    c.tokenizer.dead_code_every = 100
    c.tokenizer.dead_code_threshold = 0.03
    c.train.global_batch_size = 64
    c.train.num_epochs = 20.0
    c.train.warmup_epochs = 0.0
    c.train.base_lr = 4e-3  # lr 1e-3 at batch 64
    c.train.b1, c.train.b2 = 0.5, 0.9
    c.train.grad_clip = 0.0
    c.train.ema_rate = 0.99
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 500
    c.train.sample_every_steps = 250
    c.train.num_grid_samples = 16
    return c
