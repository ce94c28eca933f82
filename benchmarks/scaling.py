"""Scaling on fake CPU devices: train step time against the number of devices (tiny MAR, batch
and FSDP over all devices), and per-device memory of a MAR size under FSDP (`--mode=compile`).
Each measurement runs in its own process (the device count is fixed when JAX starts) and
prints one JSON line.

  python benchmarks/scaling.py step-time --devices=1,2,4,8 --batch=32
  python benchmarks/scaling.py memory --size=mar_huge --devices=8,16,64 --batch-per-device=32
  python benchmarks/scaling.py memory --size=mar_huge --devices=8 --set model.dtype=bfloat16 --set model.remat=full

Fake devices share the host's cores, so step time measures the cost of partitioning and
collectives on one machine, not a speed-up.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET_CONFIGS = {"mar_base": "configs/mar_base.py", "mar_large": "configs/mar_large.py",
                  "mar_huge": "configs/mar_huge.py"}


# Cheaper CPU code generation: the same memory analysis and FLOPs (checked on the tiny model), a
# fraction of the compile time; step times are taken without it.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _env(num_devices: int, fast_compile: bool = False) -> dict:
    flags = f"--xla_force_host_platform_device_count={num_devices}" + (f" {FAST_COMPILE_FLAGS}" if fast_compile else "")
    return {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO, "XLA_FLAGS": flags}


def step_time_child(batch: int, repeats: int) -> None:
    """In a process with N fake devices: median step time of the tiny-cpu MAR with FSDP over all N."""
    import jax
    import numpy as np

    from benchmarks.bench_setup import TINY_CPU, run_facts, time_calls
    import functools

    import optax

    from marjax.config.defaults import base_config
    from marjax.models.mar import MAR, init_boxed_params, init_params
    from marjax.parallel.sharding import batch_sharding, make_mesh
    from marjax.tasks.mar_step import make_train_step, weight_decay_mask
    from marjax.tasks.recipe import make_optimizer
    from marjax.tasks.train_state import create_train_state, jit_train_step, state_layout

    mesh_config = base_config().mesh
    mesh_config.fsdp_min_size = 2 ** 14
    mesh = make_mesh(1, jax.device_count(), 1)
    model = MAR(**TINY_CPU)
    tx = make_optimizer(optax.constant_schedule(1e-4), weight_decay_mask)
    init = functools.partial(init_params, model)
    _, shardings = state_layout(init, functools.partial(init_boxed_params, model), tx, mesh, mesh_config)
    state = jax.jit(functools.partial(create_train_state, init, tx), out_shardings=shardings)(jax.random.key(0))
    mar_step = make_train_step(model, tx, optax.constant_schedule(1e-4), batch_sharding=batch_sharding(mesh))
    step = jit_train_step(lambda state, batch, rng, frozen: mar_step(state, batch, rng), shardings, mesh)
    rng = np.random.default_rng(0)
    side = model.latent_size
    inputs = jax.device_put({"latents": rng.standard_normal((batch, side, side, model.latent_channels), np.float32),
                             "labels": rng.integers(0, 10, batch).astype(np.int32)}, batch_sharding(mesh))
    holder = [state]

    def one_step():
        holder[0], metrics = step(holder[0], inputs, jax.random.key(1))
        return metrics["loss"]

    first, median = time_calls(one_step, repeats)
    print(json.dumps({"benchmark": "scaling_step_time", **run_facts(), "model": "tiny-cpu", "batch": batch,
                      "mesh": dict(mesh.shape), "first_call_s": round(first, 3), "step_s": round(median, 4)}))


def step_time(devices: list[int], batch: int, repeats: int) -> None:
    for n in devices:
        subprocess.run([sys.executable, __file__, "step-time-child", f"--batch={batch}", f"--repeats={repeats}"],
                       cwd=REPO, env=_env(n), check=True)


def memory(size: str, devices: list[int], batch_per_device: int, overrides: list[str]) -> None:
    """Per-device memory and FLOPs of `size` on an FSDP mesh of each device count (compile only);
    `overrides` are config settings "key=value" (e.g. "model.dtype=bfloat16")."""
    for n in devices:
        with tempfile.TemporaryDirectory() as workdir:
            run = subprocess.run([sys.executable, "-m", "marjax.main", f"--config={PRESET_CONFIGS[size]}",
                                  f"--workdir={workdir}", "--mode=compile", "--config.mesh.data=1",
                                  f"--config.mesh.fsdp={n}", f"--config.train.global_batch_size={n * batch_per_device}",
                                  *(f"--config.{o}" for o in overrides)],
                                 cwd=REPO, env=_env(n, fast_compile=True), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
            if run.returncode != 0:
                raise SystemExit(f"error: compiling {size} on {n} devices failed:\n{run.stderr[-3000:]}")
            with open(os.path.join(workdir, "compile_report.jsonl")) as f:
                records = {r["report"]: r for r in map(json.loads, f)}
        print(json.dumps({"benchmark": "scaling_memory", "size": size, "overrides": overrides, **records["setup"],
                          "per_device_gib": records["memory"]["per_device_gib"],
                          "tflops_per_device": round(records["cost"]["flops_per_device"] / 1e12, 2)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["step-time", "step-time-child", "memory"])
    parser.add_argument("--devices", default="1,2,4,8", help="comma-separated fake device counts")
    parser.add_argument("--batch", type=int, default=32, help="step-time: global batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", default="mar_huge", choices=sorted(PRESET_CONFIGS))
    parser.add_argument("--batch-per-device", type=int, default=32)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="memory: a config override, e.g. model.dtype=bfloat16 (repeatable)")
    args = parser.parse_args()
    devices = [int(n) for n in args.devices.split(",")]
    if args.what == "step-time-child":
        step_time_child(args.batch, args.repeats)
    elif args.what == "step-time":
        step_time(devices, args.batch, args.repeats)
    else:
        memory(args.size, devices, args.batch_per_device, args.set)


if __name__ == "__main__":
    main()
