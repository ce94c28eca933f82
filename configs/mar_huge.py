"""MAR-H (942.40M params) on ImageNet 256, the published recipe (FID 1.55 with CFG 3.2).

  python -m marjax.main --config=configs/mar_huge.py --workdir=/path/to/workdir \
      --config.data.tfds_data_dir=/path/to/tensorflow_datasets

From an image folder instead of TFDS: --config.data.source=image_folder --config.data.path=/imagenet/train
"""
from marjax.config.loading import config_argument
from marjax.tasks.mar import imagenet_mar_config


def get_config(arg: str | None = None):
    config_argument(arg)
    return imagenet_mar_config("mar_huge", cfg=3.2)
