"""The embedded default: a pixel-space MAR on scikit-learn's 8x8 digits, minutes on a laptop CPU.

  python -m marjax.main --config=configs/digits.py --workdir=/tmp/marjax-digits

Tokens are 2x2 pixel patches (16 tokens of 4 values); nothing is downloaded (the digits ship
inside scikit-learn). `get_config("runlocal")` is a few-step smoke run; `get_config("tiny_cpu")`
is the speed-comparison size of BENCHMARKS.md (8x8 tokens of 16 values: the digits at 32x32 in 4x4
patches, width 256, 4 + 4 blocks, buffer 16, DiffLoss 3 x 256; 16 samples, 16 steps, 50 diffusion
steps, CFG 2.0).
"""
from marjax.config.defaults import base_config
from marjax.config.loading import config_argument


def get_config(arg: str | None = None):
    c = base_config()
    c.data.source = "digits"
    c.data.image_size = 8
    c.data.channels = 1
    c.data.num_classes = 10
    c.data.random_flip = False  # a mirrored digit is another glyph

    c.tokenizer.kind = "pixels"

    c.model.patch_size = 2
    c.model.update(encoder_width=128, encoder_depth=2, encoder_heads=4,
                   decoder_width=128, decoder_depth=2, decoder_heads=4,
                   buffer_size=4, diffloss_depth=3, diffloss_width=128,
                   attn_dropout=0.0, proj_dropout=0.0)

    c.train.global_batch_size = 64
    c.train.num_epochs = 107.0         # 3,000 steps of 64 (28 steps per epoch)
    c.train.warmup_epochs = 3.5
    c.train.base_lr = 4e-3             # lr 1e-3 at batch 64
    c.train.ema_rate = 0.999
    c.train.diffusion_batch_mul = 1
    c.train.log_every_steps = 250
    c.train.checkpoint_every_steps = 1000
    c.train.sample_every_steps = 1000
    c.train.num_grid_samples = 50

    c.sample.num_images = 100
    c.sample.batch_size = 100
    c.sample.num_iter = 8
    c.sample.cfg = 2.0
    c.sample.temperature = 1.0
    # Pixels live in [-1, 1]; clipping the x_0 prediction keeps a briefly trained model's
    # high-noise steps from diverging (the reference samples latents unclipped).
    c.sample.clip_denoised = True

    # --mode=eval: 50 samples per class against all 1,797 real digits, with the in-process classifier.
    c.eval.feature_network = "digits"
    c.eval.num_images = 500
    c.eval.batch_size = 100

    variant = config_argument(arg, ("runlocal", "tiny_cpu"))
    if variant == "tiny_cpu":
        c.data.image_size = 32
        c.model.patch_size = 4
        c.model.update(encoder_width=256, encoder_depth=4, encoder_heads=4,
                       decoder_width=256, decoder_depth=4, decoder_heads=4,
                       buffer_size=16, diffloss_depth=3, diffloss_width=256)
        c.train.global_batch_size = 32
        c.train.diffusion_batch_mul = 4
        c.sample.update(num_images=16, batch_size=16, num_iter=16, num_diffusion_steps="50")
    if variant == "runlocal":
        c.train.num_steps = 8
        c.train.log_every_steps = 2
        c.train.checkpoint_every_steps = 4
        c.sample.num_images = 20
        c.sample.batch_size = 20
        c.eval.num_images = 20
        c.eval.batch_size = 20
    return c
