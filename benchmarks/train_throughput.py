"""Train-step time, images/s, compile time and compiled temporaries of MAR on the local device.
Prints one JSON line.

  python benchmarks/train_throughput.py --size=tiny-cpu --batch=32
  python benchmarks/train_throughput.py --size=mar_large --batch=64 --bf16
  python benchmarks/train_throughput.py --size=mar_base --depth=4 --batch=8 --remat=dots --scan-layers
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp

from bench_setup import SIZES, build_model, run_facts, time_calls
from marjax.models.block_stack import REMAT_POLICIES
from marjax.train_step import create_train_state, learning_rate_schedule, make_optimizer, make_train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="tiny-cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bf16", action="store_true", help="bf16 compute, fp32 params")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after the first")
    parser.add_argument("--diffusion-batch-mul", type=int, default=4)
    parser.add_argument("--depth", type=int, default=None, help="encoder and decoder blocks (default: the size's)")
    parser.add_argument("--remat", choices=list(REMAT_POLICIES), default="none")
    parser.add_argument("--scan-layers", action="store_true", help="each block group as one nn.scan")
    args = parser.parse_args()

    depth = {} if args.depth is None else {"encoder_depth": args.depth, "decoder_depth": args.depth}
    model = build_model(args.size, args.bf16, remat=args.remat, scan_layers=args.scan_layers, **depth)
    schedule = learning_rate_schedule(1e-4, 100)
    tx = make_optimizer(schedule)
    state = jax.jit(create_train_state, static_argnums=(0, 1))(model, tx, jax.random.key(0))
    step = jax.jit(make_train_step(model, tx, schedule, diffusion_batch_mul=args.diffusion_batch_mul),
                   donate_argnums=0)
    batch = {"latents": jax.random.normal(jax.random.key(1),
                                          (args.batch, model.latent_size, model.latent_size, model.latent_channels)),
             "labels": jnp.arange(args.batch) % model.num_classes}
    rng = jax.random.key(2)
    start = time.perf_counter()
    step = step.lower(state, batch, rng).compile()  # trace, lower and compile
    compile_s = time.perf_counter() - start
    temp_bytes = step.memory_analysis().temp_size_in_bytes

    def one_step():
        nonlocal state
        state, metrics = step(state, batch, rng)
        return metrics["loss"]

    first, median = time_calls(one_step, args.steps)
    print(json.dumps({"benchmark": "train_step", "size": args.size, "batch": args.batch, "bf16": args.bf16,
                      "diffusion_batch_mul": args.diffusion_batch_mul, "encoder_depth": model.encoder_depth,
                      "decoder_depth": model.decoder_depth, "remat": args.remat, "scan_layers": args.scan_layers,
                      "step_s": round(median, 4), "img_per_s": round(args.batch / median, 2),
                      "first_step_incl_compile_s": round(compile_s + first, 2), "compile_s": round(compile_s, 2),
                      "temp_mib": round(temp_bytes / 2**20, 1), **run_facts()}))


if __name__ == "__main__":
    main()
