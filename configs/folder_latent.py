"""MAR on the latents of your own image folder: the second of the latent path's two runs, after
`configs/folder_vae.py`. The decoder is convolutional, so it smooths across token borders: on the
28x28 digit folder the 4x4 patch texture of the pixel path (`configs/folder.py`) goes away
(BENCHMARKS.md "Sample quality beyond the 8x8 digits").

  python -m marjax.main --config=configs/folder_vae.py --workdir=/tmp/my-vae --config.data.path=/data/my_images
  python -m marjax.cache_tokens --config=configs/folder_latent.py --output=/tmp/my-latents \\
      --config.data.path=/data/my_images --config.tokenizer.checkpoint=/tmp/my-vae
  python -m marjax.main --config=configs/folder_latent.py --workdir=/tmp/my-latent-mar \\
      --config.data.source=cached_latents --config.data.path=/tmp/my-latents --config.tokenizer.checkpoint=/tmp/my-vae

`configs/folder.py`'s model and sampler on 14x14x4 latents in 2x2 patches: the same 49 tokens of
16 values, each covering 4x4 pixels, and temperature 0.7. Caching the latents once saves encoding
every batch (on a 2-core CPU the run takes 9 minutes where 2,400 steps from the images took 15);
training straight from the images (`data.source=image_folder`) works too. `tokenizer.scale` and
the x_0 clip range fit the 28x28 digits' latents; `marjax.cache_tokens` prints the values that fit
yours.
"""
import os

from marjax.config.loading import config_argument, load_config_file


def get_config(arg: str | None = None):
    config_argument(arg)
    here = os.path.dirname(os.path.abspath(__file__))
    c = load_config_file(os.path.join(here, "folder.py"))
    c.tokenizer = load_config_file(os.path.join(here, "folder_vae.py")).tokenizer
    c.tokenizer.scale = 0.3262  # 1 / std of the digit folder's latents (3.07)
    c.model.patch_size = 2
    # 2,400 steps from the cache took 10 min 40 s on 2 cores; 2,200 fit in 10 minutes.
    c.train.num_steps = 2_200
    c.train.checkpoint_every_steps = 1_100
    c.train.sample_every_steps = 1_100
    # A briefly trained DiffLoss runs away at the high-noise steps unless x_0 is clipped a little
    # above the data's range (README "The latent path on the digits"); the scaled latents reach 4.74.
    c.sample.clip_denoised = True
    c.sample.clip_range = 6.0
    c.sample.temperature = 0.7  # 94.4% of the folder's digits recognised at 0.8, 96.8% at 0.7
    return c
