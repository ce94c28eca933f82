"""The device mesh and where arrays live on it.

One mesh with named axes ("data", "fsdp", "tensor") built from `config.mesh`; one CPU is a
1x1x1 mesh. The batch is split over "data" x "fsdp".

Parameters carry logical axis names (`nn.with_logical_partitioning` in the models: "embed",
"mlp", "conv_out", ...). `config.mesh.rules` maps them to mesh axes, in priority order: for
each rule, a dimension with that name takes the mesh axis if the axis is larger than 1, not
already used by the array, and divides the dimension. Arrays with fewer than
`config.mesh.fsdp_min_size` elements stay replicated. The EMA and the optimizer moments of a
parameter take the parameter's sharding. FSDP is the one-line choice `mesh.fsdp = N`.

Stacked block params (`model.scan_layers`) lead with the axis `LAYER_AXIS`, which no rule maps:
they are split like one layer's params (the size threshold too counts one layer), and every
device holds all layers' shards.
"""
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from marjax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# The leading axis of a stacked block group (`model.scan_layers`); no sharding rule may map it, so
# each scan step finds its layer's params where the unstacked model would have them.
LAYER_AXIS = "layers"
Rules = Sequence[tuple[str, str]]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: list | None = None) -> jax.sharding.Mesh:
    """A ("data", "fsdp", "tensor") mesh over all devices; -1 in one axis takes the devices left over."""
    devices = jax.devices() if devices is None else devices
    n = len(devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"only one of mesh.data, mesh.fsdp, mesh.tensor can be -1, got {sizes}")
    if -1 in sizes:
        known = int(np.prod([s for s in sizes if s != -1]))
        sizes[sizes.index(-1)] = n // known
    if int(np.prod(sizes)) != n:
        raise ValueError(f"mesh.data={data} x mesh.fsdp={fsdp} x mesh.tensor={tensor} does not cover the "
                         f"{n} devices")
    return jax.make_mesh(tuple(sizes), MESH_AXES, (jax.sharding.AxisType.Auto,) * 3, devices=devices)


def mesh_from_config(mesh_config: ml_collections.ConfigDict, devices: list | None = None) -> jax.sharding.Mesh:
    """The mesh of `config.mesh` over `devices` (default: all); ConfigError when the sizes do not fit."""
    validate_mesh(mesh_config)
    try:
        return make_mesh(mesh_config.data, mesh_config.fsdp, mesh_config.tensor, devices)
    except ValueError as e:
        raise ConfigError(str(e)) from e

def validate_mesh(mesh: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for mesh sizes other than -1 or >= 1, for rules that are not
    (logical name, mesh axis) pairs naming an axis of the mesh, and for a rule on the stacked
    layer axis."""
    for axis in MESH_AXES:
        if mesh[axis] != -1 and mesh[axis] < 1:
            raise ConfigError(f"mesh.{axis}={mesh[axis]}: use a device count >= 1, or -1 for the devices left over")
    for rule in mesh.rules:
        if len(rule) != 2 or not isinstance(rule[0], str) or rule[1] not in MESH_AXES:
            raise ConfigError(f"mesh.rules entry {rule!r}: use (logical axis name, mesh axis) with a mesh axis "
                              f"in {list(MESH_AXES)}")
        if rule[0] == LAYER_AXIS:
            # Stacked params are meant to be split like one layer, on their other dimensions: with
            # the layer axis split, every scan step would fetch its layer from other devices.
            raise ConfigError(f"mesh.rules entry {rule!r}: the stacked layer axis of model.scan_layers stays "
                              f"replicated; shard the other dimensions")


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis split over "data" x "fsdp"."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def logical_axes(boxed_init: Callable[[], Any]) -> Any:
    """The logical axis names of every leaf `boxed_init()` returns (a tree of PartitionSpecs of
    names, P() for unnamed leaves), from shapes only: nothing is allocated."""
    return nn.get_partition_spec(jax.eval_shape(boxed_init))


def mesh_spec(names: P, shape: tuple[int, ...], mesh: jax.sharding.Mesh, rules: Rules, min_size: int) -> P:
    """The mesh PartitionSpec of an array of `shape` whose dimensions have logical `names`."""
    per_layer = [size for dim, size in enumerate(shape) if dim >= len(names) or names[dim] != LAYER_AXIS]
    if int(np.prod(per_layer, dtype=np.int64)) < min_size:
        return P()
    spec: list[str | None] = [None] * len(shape)
    for logical, axis in rules:
        for dim, name in enumerate(names):
            size = mesh.shape[axis]
            if (name == logical and spec[dim] is None and axis not in spec and size > 1
                    and shape[dim] % size == 0):
                spec[dim] = axis
    return P(*spec)


def param_shardings(names: Any, shapes: Any, mesh: jax.sharding.Mesh, rules: Rules, min_size: int) -> Any:
    """A NamedSharding for each param, from its logical `names` (tree of P) and `shapes`."""
    return jax.tree.map(lambda n, x: NamedSharding(mesh, mesh_spec(n, x.shape, mesh, rules, min_size)),
                        names, shapes, is_leaf=lambda n: isinstance(n, P))


def optimizer_shardings(tx: optax.GradientTransformation, opt_shapes: Any, params_shardings: Any,
                        mesh: jax.sharding.Mesh) -> Any:
    """Shardings of `tx`'s state: moments as their params, counts and scalars replicated."""
    return optax.tree_map_params(tx, lambda _, sharding: sharding, opt_shapes, params_shardings,
                                 transform_non_params=lambda _: replicated(mesh))


def with_shardings(shapes: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `shapes` with `shardings` attached: an abstract state to restore or compile onto."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
