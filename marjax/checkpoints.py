"""Orbax checkpoints of a run: train state, data iterator state and config, saved asynchronously.

Layout: `<workdir>/checkpoints/<step>/{state, data, config}`. Orbax writes each step into a
temporary directory and renames it when complete, so a process killed at any moment leaves
the previous checkpoints restorable. Restoring takes the target shardings, so a run resumes
onto any mesh.

What this module guarantees (README "Checkpoints, resumption, preemption"):
- a state holding NaN or Inf is never saved (`save` raises `TrainingDiverged`);
- a damaged step (files missing, truncated or unreadable) is named with its file, and
  `restore_newest` falls back to the newest step that restores, setting the damaged ones aside
  in `<workdir>/damaged_checkpoints` (never deleting them);
- a checkpoint of another model, or of another optimizer layout when training, is refused
  naming the differing params and config fields.
"""
import collections
import dataclasses
import glob
import json
import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from marjax.config.defaults import base_config
from marjax.errors import DamagedCheckpoint, IncompatibleCheckpointError, TrainingDiverged

DAMAGED_FOLDER = "damaged_checkpoints"
DIVERGED_FOLDER = "diverged_checkpoints"
# What a damaged file raises inside Orbax, tensorstore, json or grain; anything else is a bug.
_READ_ERRORS = (OSError, ValueError, KeyError, AttributeError)
_SHOWN = 8  # differing entries listed in a message before "... and N more"
T = TypeVar("T")


def may_change_on_resume(model_field: str) -> bool:
    """Model fields that change how a step computes, not what the params mean: the compute dtype,
    rematerialisation, the attention kernel and regularisation. Any other model field must match."""
    return model_field in ("dtype", "remat", "attention_impl") or "dropout" in model_field or "drop_path" in model_field


@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> list[jax.Array]:
    return [jnp.all(jnp.isfinite(x)) for x in leaves]


def nonfinite_arrays(tree: Any) -> list[str]:
    """Paths ("params/z_proj/kernel") of the floating arrays of `tree` holding a NaN or Inf."""
    leaves = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
              if x is not None and jnp.issubdtype(x.dtype, jnp.inexact)]
    flags = _finite_flags([x for _, x in leaves]) if leaves else []
    return [_path(p) for (p, _), ok in zip(leaves, flags) if not bool(ok)]


def _listing(items: list[str]) -> str:
    shown = "\n".join(f"  {item}" for item in items[:_SHOWN])
    return shown + (f"\n  ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


class RunCheckpoints:
    """The checkpoints of one workdir."""

    def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.read_only = read_only
        self.keep = keep
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={"state": ocp.PyTreeCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
                           "config": ocp.JsonCheckpointHandler(), "log_window": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep, create=not read_only,
                                               cleanup_tmp_directories=not read_only,
                                               read_only=read_only))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def describe_latest(self) -> str:
        """"the last good checkpoint is step N in DIR", or that there is none (after pending saves)."""
        self.wait()
        latest = self.latest_step()
        return (f"there is no good checkpoint in {self.directory}" if latest is None
                else f"the last good checkpoint is step {latest} in {self.directory}")

    def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None,
             config: ml_collections.ConfigDict, log_window: list[dict] | None = None) -> None:
        """Starts an asynchronous save of step `step` (returns before the files are written).
        Without a data iterator (converted weights) a resumed run starts its data afresh.
        `log_window`: the metrics of the steps since the last log line ({name: float} per step).
        Raises TrainingDiverged, saving nothing, when a floating array of `state` is not finite."""
        bad = nonfinite_arrays(state)
        if bad:
            fields = collections.Counter(path.split("/")[0] for path in bad)
            counts = ", ".join(f"{name} {count}" for name, count in fields.items())
            raise TrainingDiverged(f"the state after {step} steps holds NaN or Inf in {len(bad)} arrays ({counts}), "
                                   f"so it was not saved:\n{_listing(bad)}\ntraining stopped; {self.describe_latest()}")
        items = {"state": ocp.args.PyTreeSave(state), "config": ocp.args.JsonSave(config.to_dict())}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        if log_window:
            # A copy: the save finishes in the background while training appends to the caller's list.
            items["log_window"] = ocp.args.JsonSave({"steps": [dict(step_metrics) for step_metrics in log_window]})
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def wait(self) -> None:
        """Blocks until every started save is on disk."""
        self.manager.wait_until_finished()

    def saved_config(self, step: int) -> dict:
        return self._reading(step, lambda: self.manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])

    def saved_params(self, step: int, field: str = "ema_params") -> Any:
        """The state's `field` saved at `step` as host numpy arrays in their saved shapes (no target
        model: for starting another model from them). DamagedCheckpoint names an unreadable step."""
        metadata = self._reading(step, lambda: self.manager.item_metadata(step)["state"])
        item = {field: getattr(metadata, "tree", metadata)[field]}
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        restored = self._reading(step, lambda: self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item, restore_args=as_numpy, partial_restore=True))))
        return restored["state"][field]

    def saved_log_window(self, step: int) -> list[dict]:
        """The metrics of the steps since the last log line that step `step` was saved with ([] if none)."""
        if not os.path.isdir(os.path.join(self.directory, str(step), "log_window")):
            return []
        return self._reading(step, lambda: self.manager.restore(
            step, args=ocp.args.Composite(log_window=ocp.args.JsonRestore()))["log_window"]["steps"])

    def check_compatible(self, step: int, abstract_state: Any, config: ml_collections.ConfigDict,
                         training: bool = True) -> None:
        """Raises IncompatibleCheckpointError naming every array whose shape differs or that exists on
        one side only, every model field that differs from the saved config (and, when `training`, the
        optimizer state's arrays and the fields the data position depends on), with the other differing
        config fields that may explain it; DamagedCheckpoint when the step's metadata cannot be read."""
        metadata = self._reading(step, lambda: self.manager.item_metadata(step)["state"])
        saved = _shapes(getattr(metadata, "tree", metadata), training)
        wanted = _shapes(_fields(abstract_state), training)
        arrays = [f"{name}: checkpoint {saved.get(name, 'absent')}, this config {wanted.get(name, 'absent')}"
                  for name in sorted(set(saved) | set(wanted)) if saved.get(name) != wanted.get(name)]
        old = self.saved_config(step)
        new = json.loads(json.dumps(config.to_dict()))  # as saved: tuples become lists
        # A field added after the checkpoint was written counts as its default, which is the
        # behaviour the checkpoint was trained with.
        defaults = json.loads(json.dumps(base_config(config.get("task", "mar")).to_dict()))
        differing = [(section, key, old[section].get(key, defaults[section].get(key)), value)
                     for section in ("model", "tokenizer", "data", "train") for key, value in new[section].items()
                     if section in old and old[section].get(key, defaults[section].get(key)) != value]
        def must_match(section: str, key: str) -> bool:
            # grain's saved position has one entry per worker process: it restores only into as many.
            return (section == "model" and not may_change_on_resume(key)) or (
                training and (section, key) == ("data", "worker_count"))

        model = [f"{s}.{k}: checkpoint {a!r}, this config {b!r}" for s, k, a, b in differing if must_match(s, k)]
        if not arrays and not model:
            return
        others = [f"{s}.{k}: checkpoint {a!r}, this config {b!r}" for s, k, a, b in differing if not must_match(s, k)]
        # Params name the problem; their EMA copy and optimizer moments repeat it, so those are counted.
        shown = [a for a in arrays if a.startswith("params/")] or arrays
        repeated = collections.Counter(a.split("/")[0] for a in arrays if a not in shown)
        also = ", ".join(f"{count} in {name}" for name, count in repeated.items())
        raise IncompatibleCheckpointError(
            f"the checkpoint at step {step} in {self.directory} was written for a different model or optimizer"
            + (f"; mismatched arrays:\n{_listing(shown)}" if arrays else "")
            + (f"\n  (and the same in other fields: {also})" if also else "")
            + (f"\nfields that must match:\n{_listing(model)}" if model else "")
            + (f"\nother config fields that differ:\n{_listing(others)}" if others else "")
            + "\nuse a new --workdir, or the config the checkpoint was trained with (README \"Checkpoints, "
              "resumption, preemption\" lists the fields that may change on resume)")

    def restore(self, step: int, abstract_state: Any, data_iterator: grain.DatasetIterator | None,
                training: bool = True) -> Any:
        """The state saved at `step`, placed with `abstract_state`'s shardings; the data iterator,
        when given, is set to its saved position. Without `training` the fields named *opt_state
        are not read and come back None (for sampling: any optimizer layout restores).
        DamagedCheckpoint names the file when the step cannot be read."""
        fields = _fields(abstract_state)
        item = {name: value for name, value in fields.items() if training or not name.endswith("opt_state")}
        args = {"state": ocp.args.PyTreeRestore(item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                                                partial_restore=len(item) < len(fields))}
        if data_iterator is not None:
            if os.path.isdir(os.path.join(self.directory, str(step), "data")):
                args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
            else:
                logging.warning("checkpoint %d holds no data position (converted weights?): the data "
                                "pipeline starts from its beginning", step)
        restored = self._reading(step, lambda: self.manager.restore(step, args=ocp.args.Composite(**args)))["state"]
        values = {name: restored.get(name) for name in fields}
        return values if isinstance(abstract_state, dict) else abstract_state.replace(**values)

    def restore_newest(self, abstract_state: Any, config: ml_collections.ConfigDict,
                       data_iterator: grain.DatasetIterator | None, training: bool = True) -> tuple[Any, int] | None:
        """(state, step) of the newest checkpoint that restores (checked with `check_compatible`), or
        None when there is no checkpoint. Damaged steps on the way are named in a warning and, unless
        read-only, moved to `<workdir>/damaged_checkpoints`; DamagedCheckpoint listing them all when
        none restores. IncompatibleCheckpointError is raised at once: the config is wrong, not the files."""
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                self.check_compatible(step, abstract_state, config, training)
                state = self.restore(step, abstract_state, data_iterator, training)
            except DamagedCheckpoint as e:
                logging.warning("%s", e)
                damaged.append((step, str(e)))
                continue
            for bad_step, _ in damaged:
                if not self.read_only:
                    logging.warning("checkpoint %d moved to %s", bad_step, self.set_aside(bad_step, DAMAGED_FOLDER))
            if damaged:
                logging.warning("using checkpoint %d, the newest that restores (damaged: %s)", step,
                                ", ".join(str(s) for s, _ in damaged))
            if not self.read_only:
                self._remove_surplus()
            return state, step
        if damaged:
            raise DamagedCheckpoint(f"no checkpoint in {self.directory} restores:\n" + "\n".join(m for _, m in damaged)
                                    + f"\nrepair them, or move {self.directory} away to start afresh")
        return None

    def _remove_surplus(self) -> None:
        """Deletes the steps beyond the newest `keep`, as Orbax would at the next save: a run killed
        while Orbax deleted one leaves it half-deleted and listed; it goes now, not one save later."""
        for step in sorted(self.manager.all_steps())[:-self.keep]:
            logging.info("removing checkpoint %d (train.keep_checkpoints=%d; a run stopped while deleting it)",
                         step, self.keep)
            self.manager.delete(step)

    def set_aside(self, step: int, folder: str) -> str:
        """Moves step `step` out of the checkpoints, into `<workdir>/<folder>/<step>` (a suffix if that
        exists), so no restore or save meets it again; returns where it went."""
        self.wait()
        target = os.path.join(self.workdir, folder, str(step))
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            suffix = 1
            while os.path.exists(target):
                target, suffix = os.path.join(self.workdir, folder, f"{step}.{suffix}"), suffix + 1
            os.rename(os.path.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"marjax set aside checkpoint {step}")
        self.manager.reload()
        return target

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def _find_damage(self, step: int) -> str | None:
        """'FILE: what is wrong' for the first file of step `step` that is missing or not the JSON it
        should be, found before Orbax opens it (its own errors rarely name the file)."""
        folder = os.path.join(self.directory, str(step))
        required = [os.path.join(folder, "state", name) for name in ("_METADATA", "manifest.ocdbt")]
        for path in required:
            if not os.path.isfile(path):
                return f"{path}: missing"
        data = os.path.join(folder, "data")
        if os.path.isdir(data) and not glob.glob(os.path.join(data, "*.json")):
            return f"{data}: no data-position file"
        config = os.path.join(folder, "config", "metadata")
        for path in [required[0], *sorted(glob.glob(os.path.join(data, "*.json"))),
                     *([config] if os.path.exists(config) else [])]:
            try:
                with open(path, "rb") as f:
                    json.loads(f.read().decode("utf-8"))
            except (OSError, ValueError) as e:
                return f"{path}: not readable JSON ({type(e).__name__}: {e})"
        return None

    def _reading(self, step: int, read: Callable[[], T]) -> T:
        """read(), with a damaged step reported as DamagedCheckpoint naming the step and the file."""
        problem = self._find_damage(step)
        if problem is None:
            try:
                return read()
            except _READ_ERRORS as e:
                text = str(e).strip()
                files = re.findall(r'local file "([^"]+)"', text)
                where = files[-1] if files else os.path.join(self.directory, str(step))
                first_line = text.splitlines()[0][:300] if text else ""
                problem = f"{where}: {type(e).__name__}: {first_line}"
        raise DamagedCheckpoint(f"checkpoint {step} in {self.directory} is damaged: {problem}")


def _fields(state: Any) -> dict:
    """The top-level fields of a state dataclass (or the items of a dict)."""
    if isinstance(state, dict):
        return dict(state)
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}


def _shapes(fields: dict, training: bool) -> dict[str, tuple]:
    """'field/path' -> shape of every array under `fields`, without the *opt_state fields unless `training`."""
    kept = {name: value for name, value in fields.items() if training or not name.endswith("opt_state")}
    return {_path(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(kept)[0]}


def _path(key_path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in key_path)
