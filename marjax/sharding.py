"""The device mesh and where arrays live on it.

One mesh with named axes ("data", "fsdp") built from `config.mesh`; one CPU is a 1x1 mesh.
The batch is split over both axes. A parameter (and its EMA and optimizer moments) with at
least `fsdp_min_size` elements is split over "fsdp" along its largest dimension divisible by
the axis size; everything else is replicated.
"""
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices: list | None = None) -> jax.sharding.Mesh:
    """A ("data", "fsdp") mesh over all devices; -1 in one axis takes the devices left over."""
    devices = jax.devices() if devices is None else devices
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("mesh.data and mesh.fsdp cannot both be -1")
    if data == -1:
        data = n // fsdp
    if fsdp == -1:
        fsdp = n // data
    if data * fsdp != n:
        raise ValueError(f"mesh.data={data} x mesh.fsdp={fsdp} does not cover the {n} devices")
    return jax.make_mesh((data, fsdp), BATCH_AXES, (jax.sharding.AxisType.Auto,) * 2, devices=devices)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis split over every mesh axis."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
    """Split the largest dimension divisible by `fsdp_size` over "fsdp"; small arrays replicated."""
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(abstract_state: Any, mesh: jax.sharding.Mesh, min_size: int) -> Any:
    """A NamedSharding for every leaf of a (shape-only) train state."""
    fsdp_size = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp_size, min_size)),
                        abstract_state)
