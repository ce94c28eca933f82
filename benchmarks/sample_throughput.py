"""Sampling time of MAR (one compiled sampler) on the local device. Prints one JSON line.

  python benchmarks/sample_throughput.py --size=tiny-cpu --batch=16 --num-iter=16 --diffusion-steps=50 --cfg=2.0
  python benchmarks/sample_throughput.py --size=mar_large --batch=256 --num-iter=64 --cfg=3.0 --bf16
"""
import argparse
import json

import jax
import jax.numpy as jnp

from bench_setup import SIZES, build_model, run_facts, time_calls
from marjax.models.mar import init_params
from marjax.sampler import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="tiny-cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--num-iter", type=int, default=16)
    parser.add_argument("--diffusion-steps", type=int, default=50)
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--cfg-schedule", default="linear")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--bf16", action="store_true", help="bf16 compute, fp32 params")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the first")
    args = parser.parse_args()

    model = build_model(args.size, args.bf16)
    params = init_params(model, jax.random.key(0))
    labels = jnp.arange(args.batch) % model.num_classes

    def sample():
        return generate(model, params, labels, jax.random.key(1), num_iter=args.num_iter, cfg=args.cfg,
                        cfg_schedule=args.cfg_schedule, temperature=args.temperature,
                        num_diffusion_steps=args.diffusion_steps)

    first, median = time_calls(sample, args.repeats)
    print(json.dumps({"benchmark": "sample", "size": args.size, "batch": args.batch, "bf16": args.bf16,
                      "num_iter": args.num_iter, "diffusion_steps": args.diffusion_steps, "cfg": args.cfg,
                      "cfg_schedule": args.cfg_schedule, "batch_s": round(median, 4),
                      "s_per_image": round(median / args.batch, 5), "first_call_incl_compile_s": round(first, 2),
                      **run_facts()}))


if __name__ == "__main__":
    main()
