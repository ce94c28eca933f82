"""Train a KL-16 VAE (MAR's tokenizer architecture, 66.46M params) on ImageNet 256, LDM recipe.

  python -m marjax.main --config=configs/kl16.py --workdir=/ckpt/kl16_train \
      --config.data.tfds_data_dir=/path/to/tensorflow_datasets

L1 reconstruction + LPIPS (weight 1.0), KL weight 1e-6, PatchGAN hinge loss weight 0.5 from
step 50,001, Adam (0.5, 0.9). LPIPS needs two weight files that marjax does not download:
`--config.tokenizer.lpips_vgg16=/path/vgg16-397923af.pth` (torchvision's ImageNet VGG-16) and
`--config.tokenizer.lpips_lin=/path/vgg.pth` (the lpips package's linear layers). Without them the run
warns and trains without the perceptual loss, and will not reach the published rFID.
"""
from marjax.config.defaults import base_config
from marjax.config.loading import config_argument


def get_config(arg: str | None = None):
    config_argument(arg)
    c = base_config()
    c.task = "tokenizer"
    c.tokenizer.kind = "kl"  # what the run trains; the base section's architecture is KL-16
    c.train.global_batch_size = 256
    c.train.base_lr = 4.5e-6 * 256  # LDM: lr = 4.5e-6 x batch; base_lr x batch / 256 gives the same
    c.train.num_epochs = 40.0
    c.train.warmup_epochs = 0.0
    c.train.b1, c.train.b2 = 0.5, 0.9
    c.train.grad_clip = 0.0
    c.train.ema_rate = 0.999
    c.train.sample_every_steps = 5000
    c.tokenizer.perceptual_weight = 1.0
    return c
