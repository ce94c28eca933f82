"""`--mode=compile`: lower and compile the task's train step for the config's mesh, without
allocating the state, and report per-device memory and FLOPs per step.

Inputs are abstract (shapes, dtypes and shardings only), so a MAR-H state for a 64-chip pod
can be planned on a laptop. Without the hardware, ask JAX for fake CPU devices of the same
mesh shape:

  XLA_FLAGS="--xla_force_host_platform_device_count=64 --xla_backend_optimization_level=0" JAX_PLATFORMS=cpu \
    python -m marjax.main --config=configs/mar_huge.py --workdir=/tmp/plan --mode=compile \
    --config.mesh.fsdp=64 --config.train.global_batch_size=2048

On fake CPU devices the argument, output and state bytes per device are exact (they follow from
the shardings); temporaries are what the CPU compiler plans, which differs from a TPU's or a
GPU's. FLOPs are XLA's cost analysis of one device's program. `--xla_backend_optimization_level=0`
only makes the CPU code generation cheaper: the memory analysis and FLOPs are the same.
"""
import json
import os

import jax
import ml_collections
import numpy as np

from marjax.config.defaults import IMAGENET_TRAIN_IMAGES
from marjax.parallel.sharding import mesh_from_config, replicated
from marjax.config.checks import check_batch_split
from marjax.tasks.base import Task
from marjax.tasks.registry import check_config, make_task
from marjax.tasks.train_state import jit_train_step

GIB = 2 ** 30


def _bytes_per_device(abstract: object) -> int:
    """Bytes one device holds of the arrays in `abstract` (ShapeDtypeStructs with shardings)."""
    return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in jax.tree.leaves(abstract))


def compiled_train_step(config: ml_collections.ConfigDict,
                        devices: list | None = None) -> tuple[Task, jax.sharding.Mesh, jax.stages.Compiled]:
    """(task, mesh, the compiled train step): the step of `config.task` on its mesh over `devices`
    (default: all), for the task's state, a batch of `train.global_batch_size`, a replicated key and
    the replicated frozen arrays, as `jit_train_step` takes them. Reads no data and no weights."""
    check_config(config, weights=False)
    mesh = mesh_from_config(config.mesh, devices)
    check_batch_split(config, mesh)
    task = make_task(config, mesh, IMAGENET_TRAIN_IMAGES)
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated(mesh))
    frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)), task.frozen)
    step = jit_train_step(task.step, task.shardings, mesh)
    batch = task.abstract_batch(config.train.global_batch_size)
    return task, mesh, step.lower(task.abstract_state, batch, rng, frozen).compile()


def compile_report(config: ml_collections.ConfigDict, devices: list | None = None) -> list[dict]:
    """Compiles the train step of `config.task` on its mesh over `devices` (default: all). Returns
    three records: "setup" (params, mesh, batches), "memory" (per device, bytes and GiB), "cost"
    (FLOPs per step)."""
    task, mesh, compiled = compiled_train_step(config, devices)
    abstract_state = task.abstract_state
    batch_size = config.train.global_batch_size

    memory = compiled.memory_analysis()
    sizes = {"arguments": memory.argument_size_in_bytes, "outputs": memory.output_size_in_bytes,
             "temps": memory.temp_size_in_bytes, "aliases": memory.alias_size_in_bytes,
             "state": _bytes_per_device(abstract_state), "params": _bytes_per_device(abstract_state.params)}
    # Donated state aliases its outputs: the live peak is arguments + outputs - aliases + temps.
    sizes["peak"] = sizes["arguments"] + sizes["outputs"] - sizes["aliases"] + sizes["temps"]
    cost = compiled.cost_analysis()
    return [
        {"report": "setup", "num_params": int(task.num_params), "mesh": dict(mesh.shape),
         "device": jax.devices()[0].device_kind, "num_devices": mesh.size, "global_batch": batch_size,
         "batch_per_device": batch_size // (mesh.shape["data"] * mesh.shape["fsdp"]), "dtype": config.model.dtype},
        {"report": "memory", "per_device_bytes": sizes,
         "per_device_gib": {k: round(v / GIB, 3) for k, v in sizes.items()}},
        {"report": "cost", "flops_per_device": float(cost.get("flops", -1.0)),
         "bytes_accessed_per_device": float(cost.get("bytes accessed", -1.0))},
    ]


def write_compile_report(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Prints the report as JSON lines and writes them to `<workdir>/compile_report.jsonl`."""
    lines = [json.dumps(record) for record in compile_report(config)]
    print("\n".join(lines), flush=True)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "compile_report.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
