"""What a restart pays to get its MAR train step back: compiling it, loading it from JAX's
persistent cache, or loading it whole from marjax's store (`marjax.stored_programs`). Prints one
JSON line.

  python benchmarks/restart_times.py --size=tiny-cpu --batch=32
  python benchmarks/restart_times.py --size=mar_large --batch=64 --bf16 --mask-buckets=1 --scan-layers

Four fresh processes in turn, sharing one empty cache folder: `compile` (JAX's cache empty, so it
compiles and fills it), `jax_cache` (the same step found in JAX's cache: traced and lowered, then
loaded), `store_first` (the store empty: compiled and stored) and `store` (loaded from the store,
no tracing). Each reports seconds from its launch to the end of its first train step
(`to_first_step_s`, imports and the state's initialisation included) and for the first step alone
(`first_step_s`: compiling or loading, then running).
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time

import jax
import ml_collections

from bench_setup import add_train_arguments, build_model, run_facts, train_setup
from marjax.blocks.block_stack import REMAT_POLICIES
from marjax.compile_cache import use_compile_cache
from marjax.stored_programs import StoredProgram, use_program_store

MODES = ("compile", "jax_cache", "store_first", "store")


def child(args: argparse.Namespace) -> None:
    """One restart: sets up the caches of `args.mode`, builds the state and runs one step."""
    folder = use_compile_cache(args.cache)
    use_program_store(folder if args.mode.startswith("store") else None)
    model = build_model(args.size, args.bf16, remat=args.remat, scan_layers=args.scan_layers)
    state, jitted, batch, rng = train_setup(model, args.batch, args.diffusion_batch_mul, args.mask_buckets)
    jax.block_until_ready(state)
    settings = ml_collections.ConfigDict({key: str(value) for key, value in sorted(vars(args).items())
                                          if key not in ("mode", "cache")})
    step = StoredProgram("restart_times_train_step", jitted, settings)
    start = time.perf_counter()
    state, metrics = step(state, batch, rng)
    jax.block_until_ready(metrics)
    print(json.dumps({"first_step_s": round(time.perf_counter() - start, 2)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    parser.add_argument("--mask-buckets", type=int, default=1)
    parser.add_argument("--remat", choices=list(REMAT_POLICIES), default="none")
    parser.add_argument("--scan-layers", action="store_true")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        child(args)
        return

    cache = tempfile.mkdtemp(prefix="marjax-restart-times-")
    results = {}
    for mode in MODES:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *sys.argv, f"--mode={mode}", f"--cache={cache}"],
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"error: the {mode} restart failed:\n{done.stderr[-3000:]}")
        results[mode] = {"to_first_step_s": round(time.perf_counter() - start, 2),
                         **json.loads(done.stdout.strip().splitlines()[-1])}
        print(f"{mode}: {results[mode]}", file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "restart_times", **run_facts(), "size": args.size, "batch": args.batch,
                      "bf16": args.bf16, "mask_buckets": args.mask_buckets, "scan_layers": args.scan_layers,
                      "remat": args.remat, **results}))


if __name__ == "__main__":
    main()
