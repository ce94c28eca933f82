"""FID Inception-v3 feature extraction time on the local device (uint8 256x256 -> pool3 and logits,
the resize to 299 included). Weights are the initialiser's (timing does not depend on them), so no
weight file is needed. Prints one JSON line.

  python benchmarks/inception_throughput.py --batch=8 --image-size=256
  python benchmarks/inception_throughput.py --batch=250 --image-size=256
"""
import argparse
import json

import jax
import numpy as np

from bench_setup import run_facts, time_calls
from marjax.feature_networks import inception


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the first")
    args = parser.parse_args()

    params = jax.jit(lambda: inception.InceptionV3().init(
        jax.random.key(0), np.zeros((1, inception.INPUT_SIZE, inception.INPUT_SIZE, 3), np.float32))["params"])()
    images = jax.device_put(np.random.default_rng(0).integers(0, 256, (args.batch, args.image_size, args.image_size, 3),
                                                              dtype=np.uint8))
    first, median = time_calls(lambda: inception.features(params, images), args.repeats)
    print(json.dumps({"benchmark": "inception_features", "batch": args.batch, "image_size": args.image_size,
                      "first_call_s": round(first, 3), "median_s": round(median, 4),
                      "images_per_s": round(args.batch / median, 2), **run_facts()}))


if __name__ == "__main__":
    main()
