"""The Task contract: where a config meets a model family.

A family registers a `TaskSpec` (`marjax.tasks.registry.TASKS`): its config checks and a
`build` that returns a `Task`, the only place its model and state are assembled. The programs
(train, sample, eval, compile, convert) use nothing else of the family.
"""
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np


@dataclasses.dataclass(frozen=True)
class Task:
    """A family's run, built from a config for a mesh.

    abstract_state: the state's shapes with shardings attached (nothing allocated); shardings:
      the NamedSharding tree. init(key) -> state.
    step(state, batch, rng, frozen) -> (state, metrics with "loss" and "grad_norm"): pure, static
      shapes. frozen: arrays the step reads but never updates (e.g. the perceptual network),
      passed as an argument so they are not baked into the compiled program, and not checkpointed.
    prepare_batch(global batch from the data pipeline, key) -> the step's batch.
    abstract_batch(global_batch_size) -> the step's batch as ShapeDtypeStructs (for compiling).
    visualize(state, key) -> (images (N, H, W, C) uint8, labels (N,)): what a training grid shows.
    generate(params, labels (B,) int32 global array, rng) -> (B, H, W, C) uint8 images on device,
      with the config's `sample` settings; None for a family that does not generate.
    edit(params, images (B, H, W, C) in [-1, 1], keep (B, H, W) bool (True = keep the pixel), labels
      (B,) int32, rng) -> (B, H, W, C) uint8: the images with every pixel not kept generated anew for
      `labels`, the kept ones as the tokenizer gives them back (`marjax.tasks.editing`); None for a
      family that cannot edit.
    generation_params(state, use_ema) -> the params `generate` and `edit` take.
    state_from_params(params, ema_params) -> a step-0 state around given weights (converters).
    num_params: parameters of the trained model.
    """

    name: str
    abstract_state: Any
    shardings: Any
    init: Callable[[jax.Array], Any]
    step: Callable
    prepare_batch: Callable[[dict, jax.Array], dict]
    abstract_batch: Callable[[int], dict]
    visualize: Callable[[Any, jax.Array], tuple[np.ndarray, np.ndarray]] | None
    generate: Callable[[Any, jax.Array, jax.Array], jax.Array] | None
    generation_params: Callable[[Any, bool], Any]
    state_from_params: Callable[[Any, Any], Any]
    num_params: int
    frozen: Any = None
    edit: Callable[[Any, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array] | None = None


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A registered family. check_config(config) raises ConfigError for values it cannot run;
    build(config, mesh, num_records, source) -> Task, where `source` (the data records, or None
    outside training) serves the training grids and `num_records` the step plan."""

    check_config: Callable[[ml_collections.ConfigDict], None]
    build: Callable[[ml_collections.ConfigDict, jax.sharding.Mesh, int, Sequence[dict] | None], Task]
