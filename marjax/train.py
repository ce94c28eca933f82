"""The training program: `train_and_evaluate(config, workdir)`, read top to bottom.

1. Check the config and open the data (fails before anything compiles).
2. Build the mesh and the task (`config.task`, a family of `marjax.tasks.registry.TASKS`: its
   model, optimizer, state layout and step); restore the newest checkpoint of the workdir that
   restores (state and data position; damaged ones are named and set aside) or initialise,
   sharded by the mesh.
3. Steps, with periodic actions: metrics to TensorBoard and the log, progress (steps/s, ETA),
   sample grids, asynchronous checkpoints.

Step numbers count completed updates: checkpoint N holds the state after N steps, and "step N"
in a message is the update that turns state N into N + 1. A NaN/Inf loss stops the run before
its state can be saved, a checkpoint of the state that gave it is set aside, and no state holding
NaN/Inf is ever saved (the last good checkpoint is named); SIGTERM saves and returns normally.
One training per workdir (`marjax.workdir.WorkdirLock`).
"""
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from marjax.checkpoints import DIVERGED_FOLDER, RunCheckpoints
from marjax.config.checks import check_batch_split
from marjax.config.loading import config_items
from marjax.data.class_labels import reported_labels
from marjax.data.pipeline import global_batch, make_dataset
from marjax.data.sources import make_source
from marjax.errors import ConfigError, TrainingDiverged
from marjax.image_files import write_samples
from marjax.metric_writer import MetricWriter, ProgressReport
from marjax.parallel.sharding import batch_sharding, mesh_from_config, replicated
from marjax.run_health import LossPlateau, codebook_warning, grid_warning
from marjax.stored_programs import StoredProgram
from marjax.tasks.recipe import step_plan
from marjax.tasks.init_from import check_init_from, start_from
from marjax.tasks.registry import check_config, make_task
from marjax.tasks.scoring import PeriodicScore
from marjax.tasks.train_state import jit_train_step
from marjax.workdir import WorkdirLock, ensure_writable_directory


class _Preemption:
    """Remembers SIGTERM, or a first Ctrl-C, so the loop can save and stop between steps (never
    inside a compile or a save); a second Ctrl-C interrupts at once, without saving."""

    def __init__(self):
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logging.warning("%s received: saving a checkpoint after the current step, then stopping%s",
                        signal.Signals(signum).name, " (Ctrl-C again: stop without saving)" if signum == signal.SIGINT
                        else "")
        self.requested = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:  # every host must agree, or the save's collectives hang
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class LogWindow:
    """Metric means over windows of `every` steps; step s closes a window when (s + 1) % every == 0
    (or s is the last step). The open window's values go into each checkpoint (`values`), so a
    resumed run logs the means an uninterrupted run logs."""

    def __init__(self, every: int, saved: list[dict] | None = None):
        self.every = every
        self.values = list(saved or [])

    def add(self, step: int, metrics: dict, last_step: int) -> dict[str, float] | None:
        """Adds the fetched metrics of `step`; returns the window's means when it closes, else None."""
        self.values.append({name: float(value) for name, value in metrics.items()})
        if (step + 1) % self.every and step + 1 != last_step:
            return None
        means = {name: float(np.mean([v[name] for v in self.values])) for name in self.values[0]}
        self.values = []
        return means


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Any:
    """Trains until `train.num_steps` (or `train.num_epochs`), resuming from `workdir` if it holds
    checkpoints. Returns the final state (the state saved at preemption, if preempted).
    WorkdirInUse when another training holds `workdir`."""
    check_config(config)
    check_init_from(config.init_from)
    ensure_writable_directory(workdir, "--workdir")
    ensure_writable_directory(os.path.join(workdir, "checkpoints"), "--workdir's checkpoints")
    mesh = mesh_from_config(config.mesh)
    check_batch_split(config, mesh)
    preemption = _Preemption()  # from here on, a signal stops the run at the next step boundary
    try:
        source = make_source(config.data)
        with WorkdirLock(workdir):
            return _train(config, workdir, source, mesh, preemption)
    finally:
        preemption.restore()


def _train(config: ml_collections.ConfigDict, workdir: str, source: Sequence[dict], mesh: jax.sharding.Mesh,
           preemption: _Preemption) -> Any:
    plan = step_plan(config, len(source))
    task = make_task(config, mesh, source=source)
    if config.train.eval_every_steps and task.generate is None:
        raise ConfigError(f"train.eval_every_steps scores generated samples; task={config.task!r} does not generate")
    logging.info("%s: %d parameters; %d records, %d steps per epoch, %d steps (%d warmup), peak lr %g; mesh %s",
                 config.task, task.num_params, len(source), plan.steps_per_epoch, plan.total_steps,
                 plan.warmup_steps, plan.peak_lr, dict(mesh.shape))

    data_iterator = iter(make_dataset(
        source, global_batch_size=config.train.global_batch_size, seed=config.seed,
        random_flip=config.data.random_flip, worker_count=config.data.worker_count,
        prefetch_buffer_size=config.data.prefetch_buffer_size))
    checkpoints = RunCheckpoints(workdir, keep=config.train.keep_checkpoints)
    init_key, train_key, sample_key, encode_key = jax.random.split(jax.random.key(config.seed), 4)
    train_step = StoredProgram("train_step", jit_train_step(task.step, task.shardings, mesh), config)
    frozen = jax.device_put(task.frozen, replicated(mesh))
    train_step.preload(task.abstract_state, task.abstract_batch(config.train.global_batch_size), train_key, frozen)
    restored = checkpoints.restore_newest(task.abstract_state, config, data_iterator)
    if restored is None:
        state, latest = jax.jit(task.init, out_shardings=task.shardings)(init_key), None
        if config.init_from:
            state = start_from(state, config.init_from, config.data.num_classes, task.shardings, workdir)
    else:
        state, latest = restored
        logging.info("resumed from the checkpoint at step %d in %s", latest, checkpoints.directory)

    batch_shard = batch_sharding(mesh)

    writer = MetricWriter(workdir, just_logging=jax.process_index() > 0)
    if latest is None:
        writer.write_hparams({k: _scalar(v) for k, v in config_items(config)})
    progress = ProgressReport(plan.total_steps, writer, config.train.log_every_steps)
    step = int(state.step)
    last_saved = latest
    pending: list[tuple[int, dict]] = []  # metrics fetched one step late, so dispatch stays ahead
    plateau = LossPlateau()
    scorer = PeriodicScore(config, mesh) if config.train.eval_every_steps else None
    window = LogWindow(config.train.log_every_steps, None if latest is None else checkpoints.saved_log_window(latest))

    def check_and_log(upto: int) -> None:
        """Fetches pending metrics, stops on NaN/Inf, writes means every log_every_steps."""
        for s, metrics in pending:
            values = jax.device_get(metrics)
            if not (np.isfinite(values["loss"]) and np.isfinite(values["grad_norm"])):
                set_aside = ""
                if last_saved == s:  # checkpoint s holds the state that gave this loss: not a good one
                    moved = checkpoints.set_aside(s, DIVERGED_FOLDER)
                    set_aside = f"checkpoint {s}, the state that gave this loss, moved to {moved}; "
                raise TrainingDiverged(
                    f"loss {values['loss']} / grad norm {values['grad_norm']} at step {s}: training stopped; "
                    f"{set_aside}{checkpoints.describe_latest()}")
            means = window.add(s, values, upto)
            if means is not None:
                writer.write_scalars(s + 1, means)  # to TensorBoard and the log
                for warning in (plateau.update(s + 1, means["loss"]), codebook_warning(means, s + 1)):
                    if warning:
                        logging.warning(warning)
        pending.clear()

    logging.info("training from step %d to %d (the first step compiles, or loads from the compilation cache)",
                 step, plan.total_steps)
    first_step, started = step, time.perf_counter()
    try:
        while step < plan.total_steps:
            if preemption.reached(step):
                check_and_log(plan.total_steps)  # the open window is saved, not logged half-full
                if step == 0:
                    logging.warning("preempted before the first step: nothing to save")
                    return state
                if last_saved != step:
                    checkpoints.save(step, state, data_iterator, config, window.values)
                checkpoints.wait()
                logging.warning("preempted: saved the checkpoint at step %d; resume with the same command", step)
                return state
            batch = global_batch(next(data_iterator), batch_shard)
            batch = task.prepare_batch(batch, jax.random.fold_in(encode_key, step))
            state, metrics = train_step(state, batch, train_key, frozen)
            check_and_log(plan.total_steps)  # the previous step's metrics, while this one runs
            pending.append((step, metrics))
            if step == first_step:  # waited for once, to tell how long compiling (or loading) took
                jax.block_until_ready(metrics)
                logging.info("first step of this run done in %.1f s", time.perf_counter() - started)
            step += 1
            progress(step)
            if step % config.train.checkpoint_every_steps == 0 or step == plan.total_steps:
                check_and_log(plan.total_steps)
                checkpoints.save(step, state, data_iterator, config, window.values)
                last_saved = step
            if task.visualize and config.train.sample_every_steps and (
                    step % config.train.sample_every_steps == 0 or step == plan.total_steps):
                images, labels = task.visualize(state, sample_key)
                path = write_samples(f"{workdir}/samples", f"train_step_{step}_ema", images,
                                     reported_labels(labels, config.data.num_classes))
                writer.write_images(step, {"samples_ema": images})
                logging.info("step %d: sample grid of the EMA params written to %s", step, path)
                if warning := grid_warning(images, step):
                    logging.warning(warning)
            if scorer and step % config.train.eval_every_steps == 0:
                figures = scorer(task, task.generation_params(state, True), step)
                writer.write_scalars(step, {f"train_eval/{k}": v for k, v in figures.items()})
        check_and_log(plan.total_steps)
        checkpoints.wait()
        logging.info("done: %d steps; checkpoints in %s", step, checkpoints.directory)
        return state
    finally:
        writer.close()
        checkpoints.close()


def _scalar(value):
    """hparams take numbers, strings and bools; None and others are written as strings."""
    return value if isinstance(value, (int, float, str, bool)) else str(value)
