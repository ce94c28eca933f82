"""A small KL autoencoder for your own image folder: the first of the latent path's two runs
(`configs/folder_latent.py` is the second).

  python -m marjax.main --config=configs/folder_vae.py --workdir=/tmp/my-folder-vae --config.data.path=/data/my_images

The digits' autoencoder (`configs/digits_vae.py`) at 28x28: 28x28 images -> 14x14x4 latents,
400 steps. Reconstruction grids (original, EMA reconstruction) are written to <workdir>/samples.
Any folder: class subfolders or none (the labels are not used). Greyscale images:
`--config.data.channels=1`, in this run and the MAR run alike.
"""
import os

from marjax.config.loading import config_argument, load_config_file


def get_config(arg: str | None = None):
    config_argument(arg)
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_vae.py"))
    c.data.update(source="image_folder", path="", image_size=28, channels=3, num_classes=0)
    c.tokenizer.resolution = 28
    c.train.num_steps = 400
    c.train.checkpoint_every_steps = 200
    c.train.sample_every_steps = 200
    return c
