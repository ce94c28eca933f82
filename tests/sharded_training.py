"""Run by tests/test_sharding.py in a subprocess with 8 fake CPU devices: the same tiny steps of a
family on several meshes, printed as one JSON line.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -m tests.sharded_training [FAMILY]

FAMILY: a registered task with a generator's state (default "mar", the test's; "ar", "gpt" and
"var" use `tests.tiny_configs`). For each mesh: the losses of `NUM_STEPS` train steps on fixed
batches (the program's own task, init and jitted step), and for a few params (MAR's `WATCHED`,
else the largest) the mesh spec and the shape of one device's shard of the param, its EMA and its
first Adam moment.
"""
import json
import pathlib
import sys
import tempfile

import jax
import numpy as np

from marjax.tasks.train_state import jit_train_step
from marjax.parallel.sharding import batch_sharding, mesh_from_config
from marjax.tasks.registry import make_task
from configs import digits
from tests.tiny_configs import TINY_CONFIGS

NUM_STEPS = 3
BATCH = 16
MESHES = {"one_device": (1, 1, 1), "fsdp8": (1, 8, 1), "data2_fsdp2_tensor2": (2, 2, 2)}
WATCHED = (("decoder_blocks_0", "mlp", "fc1", "kernel"), ("decoder_pos_embed_learned",),
           ("decoder_blocks_0", "norm1", "scale"))


def tiny_config(family: str, folder: pathlib.Path):
    if family != "mar":
        c = TINY_CONFIGS[family](folder)
        c.train.update(global_batch_size=BATCH, num_steps=NUM_STEPS, warmup_epochs=0.0)
        c.mesh.fsdp_min_size = 256
        return c
    c = digits.get_config()
    c.model.update(encoder_width=32, encoder_depth=1, encoder_heads=2, decoder_width=32, decoder_depth=1,
                   decoder_heads=2, diffloss_depth=1, diffloss_width=32)
    c.train.global_batch_size = BATCH
    c.train.num_steps = NUM_STEPS
    c.train.warmup_epochs = 0.0
    c.mesh.fsdp_min_size = 256
    c.train.mask_buckets = 2  # the switch between the buckets' branches runs sharded too
    return c


def _leaf(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def largest_param(params) -> tuple[str, ...]:
    """The path of the param with the most elements."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    path, _ = max(leaves, key=lambda item: item[1].size)
    return tuple(k.key for k in path)


def run(config, devices, watched_paths) -> dict:
    mesh = mesh_from_config(config.mesh, devices)
    task = make_task(config, mesh, num_records=1000)
    state = jax.jit(task.init, out_shardings=task.shardings)(jax.random.key(0))
    step = jit_train_step(task.step, task.shardings, mesh)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(NUM_STEPS):
        size = config.data.image_size
        batch = {"images": rng.uniform(-1, 1, (BATCH, size, size, 1)).astype(np.float32),
                 "labels": rng.integers(0, 10, BATCH).astype(np.int32)}
        batch = task.prepare_batch(jax.device_put(batch, batch_sharding(mesh)), jax.random.key(1))
        state, metrics = step(state, batch, jax.random.key(2), task.frozen)
        losses.append(float(metrics["loss"]))
    adam_mu = state.opt_state[1][0].mu  # chain(clip, adamw): adamw's scale_by_adam state
    watched = {}
    for path in watched_paths or [largest_param(state.params)]:
        arrays = {"param": _leaf(state.params, path), "ema": _leaf(state.ema_params, path),
                  "adam_mu": _leaf(adam_mu, path)}
        watched["/".join(path)] = {name: {"spec": [a if a is None or isinstance(a, str) else list(a)
                                                   for a in x.sharding.spec],
                                          "shard_shape": list(x.addressable_shards[0].data.shape),
                                          "shape": list(x.shape)}
                                   for name, x in arrays.items()}
    return {"losses": losses, "num_devices": len(devices), "watched": watched}


def main() -> None:
    family = sys.argv[1] if len(sys.argv) > 1 else "mar"
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, (data, fsdp, tensor) in MESHES.items():
            config = tiny_config(family, pathlib.Path(folder) / name)
            config.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
            results[name] = run(config, jax.devices()[:data * fsdp * tensor], WATCHED if family == "mar" else None)
    json.dump(results, sys.stdout)
    print()


if __name__ == "__main__":
    main()
