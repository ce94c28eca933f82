"""Train a VQ-16 tokenizer (LlamaGen recipe: codebook 16384 x 8, L2-normalised) on ImageNet 256.

  python -m marjax.main --config=configs/vq16.py --workdir=/ckpt/vq16_train \
      --config.data.tfds_data_dir=/path/to/tensorflow_datasets

Codebook + 0.25 commitment loss, L2 reconstruction, PatchGAN hinge with the fixed weight 0.5 from
step 20,000 (LlamaGen's 0-based step 19,999), Adam (0.9, 0.95) at lr 1e-4, gradients clipped to 1.0
(both networks), no EMA, LPIPS weight 1.0 from the two weight files given as in configs/kl16.py
(`--config.tokenizer.lpips_vgg16=... --config.tokenizer.lpips_lin=...`; without them: a warning, no LPIPS).
"""
from marjax.config.defaults import base_config
from marjax.config.loading import config_argument


def get_config(arg: str | None = None):
    config_argument(arg)
    c = base_config()
    c.task = "tokenizer"
    c.tokenizer.kind = "vq"
    # LlamaGen's layout: attention after every res block of the lowest level (16x16), encoder and decoder.
    c.tokenizer.update(attn_resolutions=(16,), resolution=256, decoder_attn_levels=(4,))
    c.tokenizer.reconstruction = "l2"
    c.tokenizer.disc_start = 19_999
    c.tokenizer.disc_adaptive_weight = False
    c.train.global_batch_size = 128
    c.train.base_lr = 2e-4  # lr 1e-4 at batch 128
    c.train.num_epochs = 40.0
    c.train.warmup_epochs = 0.0
    c.train.grad_clip = 1.0
    c.train.ema_rate = 0.0  # the EMA stays equal to the params
    c.train.sample_every_steps = 5000
    c.tokenizer.perceptual_weight = 1.0
    return c
