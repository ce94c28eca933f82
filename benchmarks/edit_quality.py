"""Editing on the digits with a trained run: the top half of each held-out digit kept, the bottom half
regenerated, once for the digit's own class and once for another class; prints one JSON line.

  python benchmarks/edit_quality.py --config=configs/var_digits.py --workdir=/tmp/marjax-var-digits

Figures: `own_class` / `other_class`, how often `marjax.digits_check`'s SVM (trained on the first
1,500 digits) labels a result as the class it was requested for (chance 0.1; for the other class
the kept top half still pulls towards the digit's own); `kept_half_change`, the mean absolute
change of the kept half's pixels (0..255; 0 on pixel tokens, the tokenizer's reconstruction error
on others); `regenerated_half_change` beside it for scale.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits
from sklearn.svm import SVC

from bench_setup import run_facts
from marjax.config.loading import load_config_file
from marjax.data.digits import NUM_TRAIN, DigitsSource, digit_pixels
from marjax.data.image_ops import to_model_range
from marjax.tasks.registry import restore_generator


def edit_all(task, params, images: np.ndarray, keep: np.ndarray, labels: np.ndarray, batch: int,
             seed: int) -> np.ndarray:
    """task.edit over (N, H, W, C) uint8 images in batches of `batch` (N a multiple of it) -> uint8 results."""
    results = []
    for start in range(0, len(images), batch):
        rows = slice(start, start + batch)
        results.append(np.asarray(task.edit(params, jnp.asarray(to_model_range(images[rows])),
                                            jnp.asarray(np.broadcast_to(keep, images[rows].shape[:3])),
                                            jnp.asarray(labels[rows], jnp.int32),
                                            jax.random.fold_in(jax.random.key(seed), start))))
    return np.concatenate(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the run's config file (path[:argument])")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--batch", type=int, default=99, help="divides the 297 held-out digits")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = load_config_file(args.config)
    task, params, step = restore_generator(config, args.workdir)
    source = DigitsSource(config.data.image_size)
    images, labels = source.images[NUM_TRAIN:], source.labels[NUM_TRAIN:]
    size = config.data.image_size
    keep = (np.arange(size) < size // 2)[:, None].repeat(size, 1)  # the top half of the rows
    svm = SVC(gamma=0.001).fit(load_digits().data[:NUM_TRAIN], load_digits().target[:NUM_TRAIN])
    figures = {}
    start = time.perf_counter()
    for name, requested in (("own_class", labels), ("other_class", (labels + 5) % 10)):
        results = edit_all(task, params, images, keep, requested, args.batch, args.seed)
        figures[name] = float((svm.predict(digit_pixels(results)) == requested).mean())
        change = np.abs(results.astype(np.float64) - images)
        figures[f"{name}_kept_half_change"] = float(change[:, :size // 2].mean())
        figures[f"{name}_regenerated_half_change"] = float(change[:, size // 2:].mean())
    print(json.dumps({"benchmark": "edit_quality", "config": args.config, "workdir": args.workdir, "step": step,
                      "num_digits": len(labels), "kept": "top half", "chance": 0.1, **figures,
                      "seconds": round(time.perf_counter() - start, 1), **run_facts()}))


if __name__ == "__main__":
    main()
