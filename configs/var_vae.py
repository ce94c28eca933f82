"""Train a multi-scale VQ tokenizer of VAR's vae_ch160v4096z32 sizes on ImageNet 256.

  python -m marjax.main --config=configs/var_vae.py --workdir=/ckpt/var_vae_train \
      --config.data.tfds_data_dir=/path/to/tensorflow_datasets \
      --config.tokenizer.lpips_vgg16=vgg16-397923af.pth --config.tokenizer.lpips_lin=vgg.pth

The architecture is the published one (108.95M params): ch 160, ch_mult (1, 1, 2, 2, 4), 2 res
blocks, codebook 4096 x 32, scales 1..16 on 4 shared Phis (ratio 0.5), beta 0.25.

The training recipe is ASSUMED: VAR did not publish its VAE training (FoundationVision/VAR's
`eini` is never called). Its maintainers point to FoundationVision/vaex, whose quantizer is
single-scale; this config takes vaex's defaults where marjax can express them: Adam (0.5, 0.9)
at lr 3e-4 (batch 768), cosine to 0.3x, no warmup, grad clip 10, EMA 0.9999, 250 epochs, no flip,
L2 pixel loss, LPIPS weight 1.0 (vaex's 0.5, doubled "to adapt legacy"), adversarial weight 0.4
(adaptive) from 22% of the run. What differs from vaex: its data are OpenImages + CC12M (here
ImageNet, as VAR's transformer), its discriminator is DINO-based with augmentation (here the
PatchGAN hinge), it adds an L1 term (0.2), dropout 0.05, AdamW weight decay 0.005 and a
uniform(+-20/4096) codebook init (here Adam without decay and VAR's N(0, 1) init). The paper
says only: L2 pixel + L2 feature + LPIPS + GAN losses. Dead codes are re-initialised every 1000
steps, a marjax remedy that VAR does not have (`--config.tokenizer.dead_code_every=0` turns it off).
"""
from marjax.config.defaults import IMAGENET_TRAIN_IMAGES, base_config
from marjax.config.loading import config_argument


def get_config(arg: str | None = None):
    config_argument(arg)
    c = base_config()
    c.task = "tokenizer"
    c.data.random_flip = False
    c.tokenizer.kind = "msvq"
    c.tokenizer.update(ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, codebook_size=4096, code_dim=32,
                       patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), num_phis=4, phi_ratio=0.5)
    c.tokenizer.reconstruction = "l2"
    c.tokenizer.codebook_weight = 1.0
    c.tokenizer.perceptual_weight = 1.0
    c.tokenizer.disc_weight = 0.4
    c.tokenizer.dead_code_every = 1000
    c.tokenizer.dead_code_threshold = 0.03
    c.train.global_batch_size = 768
    c.train.num_epochs = 250.0
    c.train.warmup_epochs = 0.0
    c.train.base_lr = 1e-4  # lr 3e-4 at batch 768
    c.train.lr_schedule = "cosine"
    c.train.min_lr = 0.3 * 3e-4
    c.train.b1, c.train.b2 = 0.5, 0.9
    c.train.grad_clip = 10.0
    c.train.ema_rate = 0.9999
    # vaex's disc_start_ep = 0.22 x epochs, in steps (set again when overriding num_epochs)
    c.tokenizer.disc_start = round(0.22 * c.train.num_epochs * (IMAGENET_TRAIN_IMAGES // c.train.global_batch_size))
    c.train.checkpoint_every_steps = 5000
    c.train.sample_every_steps = 5000
    return c
