"""Train a VQ-16 tokenizer (LlamaGen recipe: codebook 16384 x 8, L2-normalised) on ImageNet 256.

  python -m marjax.main --config=configs/vq16.py --workdir=/ckpt/vq16_train \
      --config.data.tfds_data_dir=/path/to/tensorflow_datasets

Codebook + 0.25 commitment loss, L2 reconstruction, PatchGAN hinge 0.5 from step 20,000, Adam
(0.9, 0.95) at lr 1e-4, LPIPS weight 1.0 from the two weight files given as in configs/kl16.py
(`--config.tokenizer.lpips_vgg16=... --config.tokenizer.lpips_lin=...`; without them: a warning, no LPIPS).
"""
from marjax.config.defaults import base_config
from marjax.config.loading import config_argument


def get_config(arg: str | None = None):
    config_argument(arg)
    c = base_config()
    c.task = "tokenizer"
    c.tokenizer.kind = "vq"
    c.tokenizer.attn_resolutions = ()
    c.tokenizer.reconstruction = "l2"
    c.tokenizer.disc_start = 20_000
    c.train.global_batch_size = 128
    c.train.base_lr = 2e-4  # lr 1e-4 at batch 128
    c.train.num_epochs = 40.0
    c.train.warmup_epochs = 0.0
    c.train.grad_clip = 0.0
    c.train.ema_rate = 0.999
    c.train.sample_every_steps = 5000
    c.tokenizer.perceptual_weight = 1.0
    return c
