"""VAR (next-scale prediction) on the embedded digits, minutes on a CPU.

  python -m marjax.main --config=configs/digits_msvq.py --workdir=/tmp/marjax-digits-msvq
  python -m marjax.main --config=configs/var_digits.py --workdir=/tmp/marjax-var-digits

16x16 digits -> the digits multi-scale VQ tokenizer's token maps 1x1, 2x2, 3x3, 4x4 (30 codes of
128) -> a 4-block VAR of width 128 predicting each scale from the ones before; VAR's recipe
otherwise (AdamW 0.9/0.95 with its decay exemptions, lin0 schedule, clip 2, class dropout 0.1),
with an EMA, which helps a run this short. Sampling: VAR's CFG 2.0 (t = 2 k / 3 at scale k).
"""
import os

from marjax.config.defaults import base_config
from marjax.config.loading import config_argument, load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg: str | None = None):
    config_argument(arg)
    digits = load_config_file(os.path.join(HERE, "digits.py"))
    c = base_config("var")
    c.data, c.eval = digits.data, digits.eval
    c.data.image_size = 16
    c.tokenizer = load_config_file(os.path.join(HERE, "digits_msvq.py")).tokenizer
    c.tokenizer.checkpoint = "/tmp/marjax-digits-msvq"
    c.model.update(width=128, depth=4, num_heads=4, drop_path_rate=0.0)
    c.train.update(global_batch_size=64, num_epochs=107.0, warmup_epochs=2.0, base_lr=4e-3, lr_schedule="lin0",
                   min_lr=4e-4, weight_decay=0.05, grad_clip=2.0, ema_rate=0.999, log_every_steps=250,
                   checkpoint_every_steps=1000, sample_every_steps=1000, num_grid_samples=50)
    c.sample.update(num_images=100, batch_size=100, cfg=2.0)
    return c
