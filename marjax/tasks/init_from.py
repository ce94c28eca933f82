"""Starting a run from another run's or a converted checkpoint's params (`init_from`), for
fine-tuning: the params, not the optimizer state or the step.

The source's EMA params (what sampling uses) are merged into the new model's fresh params, path by
path:
- the same shape: kept;
- a class table (a 2-D param named class/cls whose rows differ): the classes both models have are
  kept, new classes keep their fresh rows (the reference's init), and a null-class row (the last
  row when the table has num_classes + 1 rows, as GPT's and VAR's) is carried over;
- a position table (named pos) whose token grid differs: the grid part resampled bicubically to the
  new grid, the leading rows outside the grid (MAR's buffer) kept;
- a param the source lacks: its fresh init;
- a param the new model lacks (the class table of a model fine-tuned without classes): dropped.
Any other difference is another architecture: an error naming the params.
"""
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from marjax.checkpoints import RunCheckpoints
from marjax.errors import ConfigError


def _name(key_path: tuple) -> str:
    """A param's tree path as "class_emb/embedding"."""
    return "/".join(getattr(k, "key", str(k)) for k in key_path)


def _flat(tree: Any) -> dict[str, Any]:
    return {_name(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _grid_prefix(old: int, new: int) -> int | None:
    """The number of leading rows outside a square token grid in both lengths (the smallest that
    leaves a square in each), or None."""
    for prefix in range(min(old, new)):
        if math.isqrt(old - prefix) ** 2 == old - prefix and math.isqrt(new - prefix) ** 2 == new - prefix:
            return prefix
    return None


def _class_rows(source: np.ndarray, fresh: np.ndarray, num_classes: int) -> np.ndarray:
    null = fresh.shape[0] == num_classes + 1
    real_old, real_new = source.shape[0] - null, fresh.shape[0] - null
    merged = np.array(fresh)
    shared = min(real_old, real_new)
    merged[:shared] = source[:shared]
    if null:
        merged[-1] = source[-1]
    return merged


def _resampled_positions(source: np.ndarray, fresh: np.ndarray, axis: int, prefix: int) -> np.ndarray:
    old_side, new_side = math.isqrt(source.shape[axis] - prefix), math.isqrt(fresh.shape[axis] - prefix)
    rows = np.moveaxis(source, axis, 0)
    grid = rows[prefix:].reshape(old_side, old_side, *rows.shape[1:])
    resized = jax.image.resize(jnp.asarray(grid), (new_side, new_side, *grid.shape[2:]), method="bicubic")
    merged = np.concatenate([rows[:prefix], np.asarray(resized).reshape(new_side * new_side, *rows.shape[1:])])
    return np.moveaxis(merged, 0, axis).astype(fresh.dtype)


def merge_params(fresh: Any, source: Any, num_classes: int) -> tuple[Any, dict[str, list[str]]]:
    """(fresh with the source's params merged in as the module doc says, a report {"kept",
    "resized", "reinitialised", "dropped"} of param names). ConfigError naming every param whose
    shape differs in another way."""
    source_flat = _flat(source)
    report: dict[str, list[str]] = {"kept": [], "resized": [], "reinitialised": [],
                                    "dropped": sorted(set(source_flat) - set(_flat(fresh)))}
    conflicts = []

    def merge(key_path, value):
        name = _name(key_path)
        old = source_flat.get(name)
        if old is None:
            report["reinitialised"].append(name)
            return value
        if old.shape == value.shape:
            report["kept"].append(name)
            return np.asarray(old, value.dtype)
        differing = [i for i, (a, b) in enumerate(zip(old.shape, value.shape)) if a != b]
        if old.ndim == value.ndim and len(differing) == 1:
            axis, leaf = differing[0], name.lower()
            if value.ndim == 2 and axis == 0 and ("class" in leaf or "cls" in leaf):
                report["resized"].append(f"{name}: {old.shape} -> {value.shape} (classes)")
                return _class_rows(old, np.asarray(value), num_classes)
            prefix = _grid_prefix(old.shape[axis], value.shape[axis]) if "pos" in leaf else None
            if prefix is not None:
                report["resized"].append(f"{name}: {old.shape} -> {value.shape} (positions, bicubic)")
                return _resampled_positions(old, np.asarray(value), axis, prefix)
        conflicts.append(f"{name}: source {old.shape}, this model {value.shape}")
        return value

    merged = jax.tree_util.tree_map_with_path(merge, fresh)
    if conflicts:
        raise ConfigError("init_from: the source is another architecture; these params differ in shape:\n  "
                          + "\n  ".join(conflicts[:12]) + (f"\n  ... and {len(conflicts) - 12} more"
                                                            if len(conflicts) > 12 else ""))
    return merged, report


def check_init_from(directory: str) -> None:
    """ConfigError unless `directory` holds a run's (or a converted) checkpoints."""
    if directory and not os.path.isdir(os.path.join(directory, "checkpoints")):
        raise ConfigError(f"init_from={directory!r} holds no checkpoints folder: give a run's workdir or a converted "
                          f"checkpoint's directory")


_REPORTED = {"resized": "resized", "reinitialised": "re-initialised", "dropped": "dropped"}  # report key -> log word


def start_from(state: Any, directory: str, num_classes: int, shardings: Any, workdir: str) -> Any:
    """`state` (a fresh TrainState) with params and EMA params from the newest checkpoint in
    `directory` (`merge_params`), placed with `shardings`; logs the report and writes it to
    `workdir`/init_from.json."""
    checkpoints = RunCheckpoints(directory, read_only=True)
    step = checkpoints.latest_step()
    if step is None:
        raise ConfigError(f"init_from={directory!r} holds no finished checkpoint")
    source = checkpoints.saved_params(step)
    checkpoints.close()
    params, report = merge_params(jax.device_get(state.params), source, num_classes)
    logging.info("init_from %s (step %d, EMA params): %d params kept, %d resized, %d re-initialised, %d dropped%s",
                 directory, step, len(report["kept"]), len(report["resized"]), len(report["reinitialised"]),
                 len(report["dropped"]), "".join(f"\n  {what} {line}" for key, what in _REPORTED.items()
                                                 for line in report[key]))
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "init_from.json"), "w") as f:
            json.dump({"source": directory, "step": step, **report}, f, indent=1)
    # Two fresh device copies: device_put of host arrays may alias their memory (both would be one
    # buffer), and the train step donates params and EMA params as separate buffers.
    placed = jax.device_put(params, shardings.params)
    copies = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree), out_shardings=shardings.params)
    return state.replace(params=copies(placed), ema_params=copies(placed))
