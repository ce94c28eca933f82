"""Where the latent path on the digits loses quality: the autoencoder's decoder, or MAR's samples.

  python benchmarks/latent_path_check.py --workdir=/tmp/marjax-digits-latent \
      --vae=/tmp/marjax-digits-vae --clip_ranges=0,3,5

Prints JSON (figures of `marjax.digits_check`: accuracy, nearest-train distance; 16x16 digits):
- `real_latents`: std and largest |value| of the scaled latents of all 1,797 digits;
- `decoder_noise`: the held-out digits' latents plus Gaussian noise of each std (in scaled latent
  units), decoded and judged: how much latent error the decoder tolerates;
- `samples`: for each clip range (0: unclipped), 500 samples (50 per class) of the MAR run's
  latest checkpoint (or `--step`) with `configs/digits_latent.py`'s sampler: the sampled
  latents' std and largest |value|, and the decoded samples' figures.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from sklearn.datasets import load_digits

from marjax import api
from marjax.data.class_labels import sample_labels
from marjax.data.digits import NUM_TRAIN, DigitsSource
from marjax.data.image_ops import to_model_range, to_uint8
from marjax.digits_check import check_digits
from marjax.tasks.generation import denoised_clip
from marjax.tasks.mar import generate_latents, model_from_config

WORKDIR = flags.DEFINE_string("workdir", None, "The configs/digits_latent.py run.", required=True)
VAE = flags.DEFINE_string("vae", "/tmp/marjax-digits-vae", "The configs/digits_vae.py run (its tokenizer).")
STEP = flags.DEFINE_integer("step", None, "The checkpoint to sample (default: the latest).")
CLIP_RANGES = flags.DEFINE_list("clip_ranges", ["0", "3", "5"], "x_0 clip ranges to sample with; 0 = unclipped.")
NOISE_STDS = (0.0, 0.1, 0.2, 0.5)


def judged(images: np.ndarray, labels: np.ndarray) -> dict:
    figures = check_digits(images, labels)
    return {k: round(figures[k], 3) for k in ("accuracy", "nearest_train_distance", "real_nearest_train_distance")}


def main(argv: list[str]) -> None:
    del argv
    run = api.load("configs/digits_latent.py", WORKDIR.value,
                   {"tokenizer.checkpoint": VAE.value, "sample.step": STEP.value})
    tokenizer, digits = run.tokenizer, DigitsSource(16)
    images = jnp.asarray(np.stack([to_model_range(digits[i]["image"]) for i in range(len(digits))]))
    latents = np.asarray(tokenizer.encode(images, jax.random.key(0)))
    heldout, heldout_labels = latents[NUM_TRAIN:], load_digits().target[NUM_TRAIN:]
    noise = np.random.default_rng(0).standard_normal(heldout.shape).astype(np.float32)
    report = {
        "step": run.step,
        "real_latents": {"std": round(float(latents.std()), 3), "max_abs": round(float(np.abs(latents).max()), 3)},
        "decoder_noise": {str(std): judged(to_uint8(np.asarray(tokenizer.decode(jnp.asarray(heldout + std * noise)))),
                                           heldout_labels) for std in NOISE_STDS},
        "samples": {},
    }
    model, labels = model_from_config(run.config), sample_labels(500, 10)
    for clip_range in map(float, CLIP_RANGES.value):
        sample = run.config.sample.copy_and_resolve_references()
        sample.update(clip_denoised=clip_range > 0, clip_range=clip_range or 1.0)
        sampled = generate_latents(model, run.params, jnp.asarray(labels), jax.random.key(0), sample)
        decoded = to_uint8(np.asarray(tokenizer.decode(sampled)))
        sampled = np.asarray(sampled)
        report["samples"][str(denoised_clip(sample))] = {"latent_std": round(float(sampled.std()), 3),
                                                         "max_abs": round(float(np.abs(sampled).max()), 3),
                                                         **judged(decoded, labels)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    app.run(main)
