"""VAR on ImageNet (256 px; 512 px for d36-s), the README's training recipe.

  python -m marjax.main --config=configs/var_imagenet.py:d16 --workdir=/path/to/workdir \
      --config.tokenizer.checkpoint=/ckpt/var_vae --config.data.tfds_data_dir=/path/to/tensorflow_datasets

The argument is a size of `marjax.models.var.PRESETS` (default d16): d16, d20, d24, d30, d36-s.
The tokenizer is VAR's vae_ch160v4096z32, converted with
`python -m marjax.convert --kind=msvq --input=vae_ch160v4096z32.pth --output=/ckpt/var_vae`.
"""
from marjax.config.loading import config_argument
from marjax.models.var import PRESETS
from marjax.tasks.var import imagenet_var_config


def get_config(arg: str | None = None):
    return imagenet_var_config(config_argument(arg, tuple(PRESETS)) or "d16")
