"""LlamaGen's class-conditional VQ-GPT on ImageNet 256 (VQ-16 codes), the published recipe.

  python -m marjax.main --config=configs/llamagen_gpt.py:gpt_b --workdir=/path/to/workdir \
      --config.tokenizer.checkpoint=/ckpt/vq16 --config.data.tfds_data_dir=/path/to/tensorflow_datasets

The argument is a size of `marjax.models.gpt.PRESETS` (default gpt_b): gpt_b, gpt_l, gpt_xl,
gpt_xxl, gpt_xxxl, gpt_1b, gpt_3b. The tokenizer is LlamaGen's VQ-16, converted with
`python -m marjax.convert --kind=vq --input=vq_ds16_c2i.pt --output=/ckpt/vq16`. Sampling uses
LlamaGen's README guidance: CFG 2.0 for gpt_b and gpt_l, 1.75 for the larger sizes.
"""
from marjax.config.loading import config_argument
from marjax.models.gpt import PRESETS
from marjax.tasks.gpt import imagenet_gpt_config


def get_config(arg: str | None = None):
    preset = config_argument(arg, tuple(PRESETS)) or "gpt_b"
    return imagenet_gpt_config(preset, cfg=2.0 if preset in ("gpt_b", "gpt_l") else 1.75)
