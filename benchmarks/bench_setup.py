"""Model sizes and run facts shared by the benchmark scripts."""
import datetime
import platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from marjax.models.mar import MAR, mar_preset

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


def run_facts() -> dict[str, Any]:
    device = jax.devices()[0]
    return {"date": datetime.date.today().isoformat(), "device": device.device_kind, "platform": device.platform,
            "num_devices": jax.device_count(), "jax": jax.__version__, "python": platform.python_version()}


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
