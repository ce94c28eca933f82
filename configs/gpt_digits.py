"""VQ-GPT (LlamaGen's recipe) on the embedded digits, minutes on a CPU.

  python -m marjax.main --config=configs/digits_vae.py:vq --workdir=/tmp/marjax-digits-vq
  python -m marjax.main --config=configs/gpt_digits.py --workdir=/tmp/marjax-gpt-digits

16x16 digits -> 8x8 codes of the digits VQ tokenizer (256 codes) -> a 4-layer Llama GPT of width
128 predicting the next code; LlamaGen's recipe otherwise (AdamW 0.9/0.95, wd 0.05 on matrices,
constant lr, clip 1.0, dropouts 0.1, class dropout 0.1), with a short warmup and an EMA, which
help a run this short.
"""
import os

from marjax.config.defaults import base_config
from marjax.config.loading import config_argument, load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg: str | None = None):
    config_argument(arg)
    digits = load_config_file(os.path.join(HERE, "digits.py"))
    c = base_config("gpt")
    c.data, c.eval = digits.data, digits.eval
    c.data.image_size = 16
    c.tokenizer = load_config_file(os.path.join(HERE, "digits_vae.py:vq")).tokenizer
    c.tokenizer.checkpoint = "/tmp/marjax-digits-vq"
    c.model.update(width=128, depth=4, num_heads=4)
    c.train.update(global_batch_size=64, num_epochs=107.0, warmup_epochs=3.5, base_lr=4e-3, weight_decay=0.05,
                   grad_clip=1.0, ema_rate=0.999, log_every_steps=250, checkpoint_every_steps=1000,
                   sample_every_steps=1000, num_grid_samples=50)
    c.sample.update(num_images=100, batch_size=100, cfg=2.0, cfg_schedule="constant")
    return c
