"""Train-step time of any family's train step, built from its config, on the local devices, with a
batch of zeros. Prints one JSON line.

  python benchmarks/task_train_throughput.py --config=configs/llamagen_gpt.py:gpt_b --batch=4
  python benchmarks/task_train_throughput.py --config=configs/llamagen_gpt.py:gpt_b --batch=64 \
      --set model.dtype=bfloat16 --steps=20
  python benchmarks/task_train_throughput.py --config=configs/var_imagenet.py:d16 --batch=16

The train step is compiled as `--mode=compile` compiles it (`compile_report.compiled_train_step`: no
data and no tokenizer weights are read), on the config's mesh over every local device, for the
task's state and a batch of `--batch` (the config's `train.global_batch_size` is replaced). The batch holds zeros of the
task's batch shapes (valid codes, labels and pixels for every family: a step's time does not depend
on the values). One warm-up step, then `--steps` steps, each blocked on.

Reported: compile and step times, images/s, XLA's FLOPs of one device's step and the TFLOP/s they
make (padding and elementwise work included), and MFU against the device's peak where it is known
(`bench_setup.PEAK_TFLOPS`, `--peak-tflops`), with the step's memory plan per device.
"""
import argparse
import ast
import json
import statistics
import time

import jax
import jax.numpy as jnp

from bench_setup import device_peak_mib, peak_tflops, run_facts
from marjax.config.loading import config_keys, load_config_file
from marjax.compile_report import compiled_train_step
from marjax.parallel.sharding import replicated


def parse_setting(setting: str) -> tuple[str, object]:
    """"model.dtype=bfloat16" -> ("model.dtype", "bfloat16"); values as Python literals where they parse."""
    key, sep, text = setting.partition("=")
    if not sep:
        raise SystemExit(f"error: --set {setting!r}: give KEY=VALUE")
    try:
        return key, ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return key, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a config file as --config= takes it, e.g. configs/x.py:arg")
    parser.add_argument("--batch", type=int, required=True, help="the global batch of the timed steps")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, if not in the table")
    args = parser.parse_args()

    config = load_config_file(args.config)
    settings = dict(parse_setting(s) for s in [*args.set, f"train.global_batch_size={args.batch}"])
    unknown = sorted(set(settings) - set(config_keys(config)))
    if unknown:
        raise SystemExit(f"error: --set: {args.config} has no field {', '.join(unknown)}")
    config.update_from_flattened_dict(settings)
    start = time.perf_counter()
    task, mesh, compiled = compiled_train_step(config)
    compile_s = time.perf_counter() - start  # the task's building included
    rng = jax.device_put(jax.random.key(config.seed), replicated(mesh))
    frozen = jax.device_put(task.frozen, replicated(mesh))
    batch = jax.tree.map(lambda x: jax.device_put(jnp.zeros(x.shape, x.dtype), x.sharding),
                         task.abstract_batch(args.batch))
    state = jax.jit(task.init, out_shardings=task.shardings)(jax.random.key(config.seed))
    state, metrics = compiled(state, batch, rng, frozen)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, rng, frozen)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)

    step_s = statistics.median(times)
    flops = float(compiled.cost_analysis().get("flops", -1.0))
    achieved = flops / step_s / 1e12 if flops > 0 else None
    peak = peak_tflops(config.model.dtype == "bfloat16", args.peak_tflops)
    memory = compiled.memory_analysis()
    mib = 2 ** 20
    print(json.dumps({
        "benchmark": "task_train_throughput", "config": args.config, "settings": args.set, "task": config.task,
        "num_params": int(task.num_params), "dtype": config.model.dtype, "mesh": dict(mesh.shape),
        "global_batch": args.batch, "compile_s": round(compile_s, 1), "step_s_median": round(step_s, 4),
        "step_s": [round(t, 4) for t in times], "images_per_s": round(args.batch / step_s, 2),
        "xla_tflop_per_device_step": round(flops / 1e12, 4),
        "achieved_tflops_per_device": achieved and round(achieved, 3),
        "peak_tflops": peak, "mfu": None if peak is None or achieved is None else round(achieved / peak, 4),
        "temp_mib": round(memory.temp_size_in_bytes / mib, 1),
        "arguments_mib": round(memory.argument_size_in_bytes / mib, 1),
        "device_peak_mib": device_peak_mib(), "finite_loss": bool(jnp.isfinite(metrics["loss"])), **run_facts()}))


if __name__ == "__main__":
    main()
