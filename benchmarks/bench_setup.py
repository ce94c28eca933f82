"""Model sizes, device peaks, run facts and the reference child process shared by the benchmark scripts."""
import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from marjax.models.mar import MAR, init_params, mar_preset
from marjax.tasks.mar_step import make_train_step, weight_decay_mask
from marjax.tasks.recipe import learning_rate_schedule, make_optimizer
from marjax.tasks.train_state import create_train_state

# "tiny-cpu": the comparison config of the core MAR issue (8x8 tokens of 16 channels, width 256,
# 4+4 blocks, 4 heads, buffer 16, DiffLoss 3x256, 10 classes). The others are the published sizes
# on ImageNet-256 KL-16 latents (16x16x16).
TINY_CPU = dict(latent_size=8, latent_channels=16, patch_size=1, encoder_width=256, encoder_depth=4,
                encoder_heads=4, decoder_width=256, decoder_depth=4, decoder_heads=4, num_classes=10,
                buffer_size=16, diffloss_depth=3, diffloss_width=256)
SIZES = ("tiny-cpu", "mar_base", "mar_large", "mar_huge")


def build_model(size: str, bf16: bool, **overrides: Any) -> MAR:
    """The MAR of `size`, bf16 compute or fp32, with other MAR fields in `overrides`."""
    dtype = jnp.bfloat16 if bf16 else jnp.float32
    if size == "tiny-cpu":
        return MAR(**{**TINY_CPU, **overrides}, dtype=dtype)
    return mar_preset(size, dtype=dtype, **overrides)


# Dense matmul peaks in TFLOP/s per device, from the vendors' data sheets (no sparsity). "fp32"
# is what JAX's default matmul precision reaches on fp32 inputs: TF32 on NVIDIA GPUs, one bf16
# pass on TPUs. Matched against `device_kind` in this order (more specific names first).
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756.5, "fp32": 378.0}),
    ("H100", {"bf16": 989.4, "fp32": 494.7}),
    ("H200", {"bf16": 989.4, "fp32": 494.7}),
    ("A100", {"bf16": 312.0, "fp32": 156.0}),
    ("TPU v4", {"bf16": 275.0, "fp32": 275.0}),
    ("TPU v5 lite", {"bf16": 197.0, "fp32": 197.0}),
    ("TPU v5", {"bf16": 459.0, "fp32": 459.0}),
    ("TPU v6 lite", {"bf16": 918.0, "fp32": 918.0}),
)


def peak_tflops(bf16: bool, override: float | None = None) -> float | None:
    """The local device's peak for the compute dtype, `override` if given; None when unknown (CPUs)."""
    if override is not None:
        return override
    kind = jax.devices()[0].device_kind
    for name, peaks in PEAK_TFLOPS:
        if name in kind:
            return peaks["bf16" if bf16 else "fp32"]
    return None


def utilisation(flops_per_image: float, images_per_s: float, peak: float | None) -> dict[str, Any]:
    """Analytic FLOPs per image, achieved TFLOP/s and MFU (None without a peak)."""
    achieved = flops_per_image * images_per_s / 1e12
    return {"gflop_per_image": round(flops_per_image / 1e9, 2), "achieved_tflops": round(achieved, 3),
            "peak_tflops": peak, "mfu": None if peak is None else round(achieved / peak, 4)}


def run_reference(python: str, code: str, what: str, arguments: list[str]) -> dict[str, Any]:
    """Runs benchmarks/reference_mar.py (the reference PyTorch MAR at `code`) in a child process
    with `python`, before this process touches the device, and returns its JSON."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_mar.py")
    result = subprocess.run([python, script, f"--code={code}", what, *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: the reference run failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every train-step benchmark takes: size, batch, bf16, timed steps, diffusion_batch_mul."""
    parser.add_argument("--size", choices=SIZES, default="tiny-cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bf16", action="store_true", help="bf16 compute, fp32 params")
    parser.add_argument("--steps", type=int, default=10, help="timed calls after the first")
    parser.add_argument("--diffusion-batch-mul", type=int, default=4)


def train_setup(model: MAR, batch_size: int, diffusion_batch_mul: int,
                mask_buckets: int = 1) -> tuple[Any, Callable, dict, jax.Array]:
    """(state, jitted train step donating its state, a random batch of `batch_size`, rng) for `model`."""
    schedule = learning_rate_schedule(1e-4, 100)
    tx = make_optimizer(schedule, weight_decay_mask)
    state = jax.jit(functools.partial(create_train_state, functools.partial(init_params, model), tx))(jax.random.key(0))
    step = jax.jit(make_train_step(model, tx, schedule, diffusion_batch_mul=diffusion_batch_mul,
                                   mask_buckets=mask_buckets), donate_argnums=0)
    side = model.latent_size
    batch = {"latents": jax.random.normal(jax.random.key(1), (batch_size, side, side, model.latent_channels)),
             "labels": jnp.arange(batch_size) % model.num_classes}
    return state, step, batch, jax.random.key(2)


def run_facts() -> dict[str, Any]:
    device = jax.devices()[0]
    return {"date": datetime.date.today().isoformat(), "device": device.device_kind, "platform": device.platform,
            "num_devices": jax.device_count(), "jax": jax.__version__, "python": platform.python_version()}


def device_peak_mib() -> float | None:
    """The local device allocator's peak bytes in use so far, in MiB; None where it keeps no count (CPU)."""
    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return round(stats["peak_bytes_in_use"] / 2**20, 1)


def time_calls(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(first call incl. compile, median of `repeats` later calls), seconds, each call blocked on."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)
