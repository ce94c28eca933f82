"""The task registry: `config.task` -> the family's TaskSpec, and what every program asks of it.

Adding a family is one line in `TASKS` (see docs/architecture.md).
"""
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from marjax.checkpoints import RunCheckpoints, nonfinite_arrays
from marjax.config.checks import validate_shared
from marjax.errors import ConfigError, TrainingDiverged
from marjax.parallel.sharding import mesh_from_config
from marjax.tasks import ar, autoencoder, gpt, mar, var
from marjax.tasks.base import Task, TaskSpec

TASKS: dict[str, TaskSpec] = {
    "mar": mar.SPEC,
    "ar": ar.SPEC,
    "gpt": gpt.SPEC,
    "var": var.SPEC,
    "tokenizer": autoencoder.SPEC,
}


def task_spec(config: ml_collections.ConfigDict) -> TaskSpec:
    """The registered family of `config.task`; ConfigError listing the registered ones otherwise."""
    if config.task not in TASKS:
        raise ConfigError(f"task={config.task!r}; choose one of {sorted(TASKS)}")
    return TASKS[config.task]


def check_config(config: ml_collections.ConfigDict, weights: bool = True) -> None:
    """Every check of `config` that needs no data and no compiling: the shared fields, then the
    family's own. `weights`: also require the files the family loads (not when only compiling)."""
    spec = task_spec(config)
    validate_shared(config)
    spec.check_config(config, weights)


def make_task(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, num_records: int | None = None,
              source: Sequence[dict] | None = None) -> Task:
    """The Task of `config.task` on `mesh`. num_records (default: one global batch) sets the step
    plan; `source`, the training records, serves the family's training grids."""
    if num_records is None:
        num_records = len(source) if source is not None else config.train.global_batch_size
    return task_spec(config).build(config, mesh, num_records, source)


def restore_state(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
                  mesh: jax.sharding.Mesh | None = None, task: Task | None = None) -> tuple[Task, object, int]:
    """(task, state, step): the state of checkpoint `step` (default: the newest that restores) in
    `workdir`, without its optimizer state (None), checked against `config` and placed on its mesh
    (or on `task`'s, a Task of `config` already made).
    FileNotFoundError when there is none; IncompatibleCheckpointError naming what differs;
    DamagedCheckpoint naming the file when the requested step (or every step) cannot be read."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"{workdir}/checkpoints does not exist: no trained or converted run there")
    if task is None:
        task = make_task(config, mesh_from_config(config.mesh) if mesh is None else mesh)
    checkpoints = RunCheckpoints(workdir, read_only=True)
    saved = list(checkpoints.manager.all_steps())
    try:
        if step is None:
            newest = checkpoints.restore_newest(task.abstract_state, config, None, training=False)
            if newest is None:
                raise FileNotFoundError(f"no checkpoint in {checkpoints.directory}")
            state, step = newest
        elif step not in saved:
            raise FileNotFoundError(f"no checkpoint at step {step} in {checkpoints.directory} (saved steps: {saved})")
        else:
            checkpoints.check_compatible(step, task.abstract_state, config, training=False)
            state = checkpoints.restore(step, task.abstract_state, None, training=False)
    finally:
        checkpoints.close()
    return task, state, step


def generating_task(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None) -> Task:
    """The Task of `config` on `mesh` (default: the config's); ConfigError when it does not generate."""
    task = make_task(config, mesh_from_config(config.mesh) if mesh is None else mesh)
    if task.generate is None:
        raise ConfigError(f"task={config.task!r} does not generate; a tokenizer run writes its reconstruction "
                          f"grids to <workdir>/samples while training")
    return task


def restore_generator(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh | None = None,
                      task: Task | None = None) -> tuple[Task, Any, int]:
    """(task, params for `task.generate`, step) from checkpoint `sample.step` (default: the newest
    that restores) of `workdir`: its EMA or raw params as `sample.use_ema` says, into `task` (default:
    `generating_task(config, mesh)`). ConfigError when the task does not generate; TrainingDiverged
    naming the checkpoint when the params hold NaN or Inf."""
    task, state, step = restore_state(config, workdir, config.sample.step, task=task or generating_task(config, mesh))
    params = task.generation_params(state, config.sample.use_ema)
    bad = nonfinite_arrays(params)
    if bad:
        kind = "EMA" if config.sample.use_ema else "raw"
        raise TrainingDiverged(f"checkpoint {step} in {workdir}/checkpoints holds NaN or Inf in {len(bad)} arrays of "
                               f"its {kind} params (first: {bad[0]}): it cannot generate; choose an earlier step "
                               f"with --config.sample.step")
    return task, params, step
