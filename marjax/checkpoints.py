"""Orbax checkpoints of a run: train state, data iterator state and config, saved asynchronously.

Layout: `<workdir>/checkpoints/<step>/{state, data, config}`. Orbax writes each step into a
temporary directory and renames it when complete, so a process killed at any moment leaves
the previous checkpoints restorable. Restoring takes the target shardings, so a run resumes
onto any mesh.
"""
import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from marjax.errors import IncompatibleCheckpointError



class RunCheckpoints:
    """The checkpoints of one workdir."""

    def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
                           "config": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep, create=not read_only,
                                               cleanup_tmp_directories=not read_only,
                                               read_only=read_only))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None,
             config: ml_collections.ConfigDict) -> None:
        """Starts an asynchronous save of step `step` (returns before the files are written).
        Without a data iterator (converted weights) a resumed run starts its data afresh."""
        items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config.to_dict())}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def wait(self) -> None:
        """Blocks until every started save is on disk."""
        self.manager.wait_until_finished()

    def saved_config(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def check_compatible(self, step: int, abstract_params: Any, config: ml_collections.ConfigDict) -> None:
        """Raises IncompatibleCheckpointError naming every param whose shape differs or that exists
        on one side only, and the model/data fields that differ from the saved config."""
        saved = self.manager.item_metadata(step)["state"].tree["params"]
        saved_shapes = {_path(p): tuple(m.shape) for p, m in jax.tree_util.tree_flatten_with_path(saved)[0]}
        wanted = {_path(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
        problems = [f"  {name}: checkpoint {saved_shapes.get(name, 'absent')}, this config {wanted.get(name, 'absent')}"
                    for name in sorted(set(saved_shapes) | set(wanted))
                    if saved_shapes.get(name) != wanted.get(name)]
        if not problems:
            return
        old = self.saved_config(step)
        fields = [f"  {section}.{key}: checkpoint {old[section].get(key)!r}, this config {value!r}"
                  for section in ("model", "data", "tokenizer") for key, value in config[section].items()
                  if old.get(section, {}).get(key) != value]
        raise IncompatibleCheckpointError(
            f"the checkpoint at step {step} in {self.directory} was written for a different model; "
            f"mismatched parameters:\n" + "\n".join(problems)
            + ("\nconfig fields that differ:\n" + "\n".join(fields) if fields else "")
            + "\nuse a new --workdir, or the config the checkpoint was trained with")

    def restore(self, step: int, abstract_state: Any, data_iterator: grain.DatasetIterator | None) -> Any:
        """The state saved at `step`, placed with `abstract_state`'s shardings; the data iterator,
        when given, is set to its saved position."""
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            if os.path.isdir(os.path.join(self.directory, str(step), "data")):
                args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
            else:
                logging.warning("checkpoint %d holds no data position (converted weights?): the data "
                                "pipeline starts from its beginning", step)
        return self.manager.restore(step, args=ocp.args.Composite(**args))["state"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _path(key_path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in key_path)
