"""A small KL autoencoder trained on the embedded digits (16x16, 1 channel -> 8x8x4 latents).

  python -m marjax.main --config=configs/digits_vae.py --workdir=/tmp/marjax-digits-vae

Reconstruction grids (original, EMA reconstruction) are written to <workdir>/samples.
`get_config("vq")` trains a VQ tokenizer on the same backbone instead.
"""
from marjax.config.defaults import base_config
from marjax.config.loading import config_argument


def get_config(arg: str | None = None):
    c = base_config()
    c.task = "tokenizer"
    c.data.source = "digits"
    c.data.image_size = 16
    c.data.channels = 1
    c.data.num_classes = 10
    c.data.random_flip = False
    c.tokenizer.kind = "kl"
    c.tokenizer.update(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=16, embed_dim=4,
                 z_channels=32, codebook_size=256, code_dim=4, disc_ndf=32, disc_layers=2, disc_start=1000)
    if config_argument(arg, ("vq",)) == "vq":
        c.tokenizer.kind = "vq"
        c.tokenizer.reconstruction = "l2"
    c.train.global_batch_size = 64
    c.train.num_epochs = 20.0
    c.train.warmup_epochs = 0.0
    c.train.base_lr = 4e-3  # lr 1e-3 at batch 64
    c.train.b1, c.train.b2 = 0.5, 0.9
    c.train.grad_clip = 0.0
    c.train.ema_rate = 0.99
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 500
    c.train.sample_every_steps = 500
    c.train.num_grid_samples = 16
    return c
