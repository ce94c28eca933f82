"""What the checkpoints guarantee, on a toy state (no model, nothing compiled but a reduction):
no non-finite state is saved; a damaged step is named with its file and the newest step that
restores is used, the damaged ones set aside; one training per workdir."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from marjax.checkpoints import DAMAGED_FOLDER, RunCheckpoints, nonfinite_arrays
from marjax.data.pipeline import make_dataset
from marjax.errors import DamagedCheckpoint, IncompatibleCheckpointError, TrainingDiverged, WorkdirInUse
from marjax.tasks.generation import generate_images, require_varied
from marjax.train import LogWindow
from marjax.workdir import WorkdirLock, ensure_writable_directory

CONFIG = ml_collections.ConfigDict({"model": {"width": 4, "dtype": "float32"}, "tokenizer": {},
                                    "data": {"worker_count": 0}, "train": {"grad_clip": 1.0}})
RECORDS = [{"image": np.full((2, 2, 1), i, np.float32), "label": np.int32(i % 10)} for i in range(32)]


def toy_state(step: int, value: float = 1.0) -> dict:
    return {"params": {"w": jnp.full((4, 4), value)}, "opt_state": {"mu": jnp.zeros((4, 4))},
            "step": jnp.int32(step)}


def abstract_state() -> dict:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), toy_state(0))


def data_iterator():
    return iter(make_dataset(RECORDS, global_batch_size=4, seed=0, random_flip=False))


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory) -> str:
    """A workdir with checkpoints 1, 2, 3 (params all equal to the step) and data positions."""
    workdir = str(tmp_path_factory.mktemp("three_steps"))
    checkpoints, data = RunCheckpoints(workdir, keep=5), data_iterator()
    for step in (1, 2, 3):
        next(data)
        checkpoints.save(step, toy_state(step, float(step)), data, CONFIG)
    checkpoints.close()
    return workdir


@pytest.fixture
def copy_of(three_steps, tmp_path) -> str:
    workdir = str(tmp_path / "w")
    shutil.copytree(three_steps, workdir)
    return workdir


def test_a_state_with_nan_or_inf_is_never_saved(tmp_path):
    checkpoints = RunCheckpoints(str(tmp_path))
    with pytest.raises(TrainingDiverged, match=r"(?s)after 1 steps holds NaN or Inf in 1 arrays \(params 1\).*"
                                               r"params/w.*there is no good checkpoint in"):
        checkpoints.save(1, toy_state(1, np.nan), None, CONFIG)
    checkpoints.save(2, toy_state(2), None, CONFIG)
    with pytest.raises(TrainingDiverged, match="the last good checkpoint is step 2 in"):
        checkpoints.save(3, toy_state(3, np.inf), None, CONFIG)
    assert list(checkpoints.manager.all_steps()) == [2]
    checkpoints.close()
    assert nonfinite_arrays({"a": jnp.ones(3), "b": jnp.array([1.0, np.nan]), "n": jnp.arange(3)}) == ["b"]


def _truncate_arrays(step_dir: str) -> None:
    for path in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "r+b") as f:
                f.truncate(10)


def _write(path: str, content: bytes) -> None:
    with open(path, "wb") as f:
        f.write(content)


DAMAGE = {
    "truncated arrays": (_truncate_arrays, "state/d/"),
    "missing arrays": (lambda d: [os.remove(p) for p in glob.glob(os.path.join(d, "state", "d", "*"))], "state/d/"),
    "garbage _METADATA": (lambda d: _write(os.path.join(d, "state", "_METADATA"), b"\xff\xfe"), "state/_METADATA"),
    "missing _METADATA": (lambda d: os.remove(os.path.join(d, "state", "_METADATA")), "state/_METADATA: missing"),
    "empty step folder": (lambda d: (shutil.rmtree(d), os.makedirs(d)), "state/_METADATA: missing"),
    "garbage data position": (lambda d: _write(glob.glob(os.path.join(d, "data", "*.json"))[0], b"{garbage"),
                              "data/process_0-of-1.json"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_latest_step_is_named_and_the_run_falls_back(copy_of, kind):
    damage, named = DAMAGE[kind]
    damage(os.path.join(copy_of, "checkpoints", "3"))
    reader = RunCheckpoints(copy_of, read_only=True)
    with pytest.raises(DamagedCheckpoint, match=f"checkpoint 3 in .* is damaged: .*{named}"):
        reader.check_compatible(3, abstract_state(), CONFIG)
        reader.restore(3, abstract_state(), None)
    state, step = reader.restore_newest(abstract_state(), CONFIG, None)  # read-only: nothing moves
    reader.close()
    assert step == 2 and float(state["params"]["w"][0, 0]) == 2.0
    assert os.path.isdir(os.path.join(copy_of, "checkpoints", "3"))

    data = data_iterator()
    trainer = RunCheckpoints(copy_of)
    state, step = trainer.restore_newest(abstract_state(), CONFIG, data)
    assert step == 2 and float(state["params"]["w"][0, 0]) == 2.0
    fresh = data_iterator()
    next(fresh), next(fresh)
    expected, got = next(fresh), next(data)  # the data position of step 2: two batches consumed
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    assert list(trainer.manager.all_steps()) == [1, 2]
    assert os.path.isdir(os.path.join(copy_of, DAMAGED_FOLDER, "3"))
    trainer.save(3, toy_state(3, 3.0), data, CONFIG)  # the step number is free again
    trainer.close()


def test_when_no_step_restores_every_one_is_named(copy_of):
    for step in (1, 2, 3):
        os.remove(os.path.join(copy_of, "checkpoints", str(step), "state", "manifest.ocdbt"))
    checkpoints = RunCheckpoints(copy_of)
    with pytest.raises(DamagedCheckpoint, match=r"(?s)no checkpoint in .* restores:\n.*checkpoint 3 .*"
                                                r"checkpoint 2 .*checkpoint 1 .*move .* away to start afresh"):
        checkpoints.restore_newest(abstract_state(), CONFIG, None)
    checkpoints.close()
    assert sorted(os.listdir(os.path.join(copy_of, "checkpoints"))) == ["1", "2", "3"]  # nothing moved


def test_resuming_refuses_another_model_or_optimizer_naming_the_fields(three_steps):
    checkpoints = RunCheckpoints(three_steps, read_only=True)
    heads = ml_collections.ConfigDict(CONFIG.to_dict())
    heads.model.width = 8  # same shapes, another model
    with pytest.raises(IncompatibleCheckpointError, match="model.width: checkpoint 4, this config 8"):
        checkpoints.check_compatible(3, abstract_state(), heads)
    heads.model.width, heads.model.dtype = 4, "bfloat16"  # may change on resume
    checkpoints.check_compatible(3, abstract_state(), heads)

    other_optimizer = {**abstract_state(), "opt_state": {"mu": abstract_state()["opt_state"]["mu"],
                                                         "nu": abstract_state()["opt_state"]["mu"]}}
    clip = ml_collections.ConfigDict(CONFIG.to_dict())
    clip.train.grad_clip = 0.0
    with pytest.raises(IncompatibleCheckpointError,
                       match=r"(?s)opt_state/nu: checkpoint absent.*train.grad_clip: checkpoint 1.0, this config 0.0"):
        checkpoints.check_compatible(3, other_optimizer, clip)
    checkpoints.check_compatible(3, other_optimizer, clip, training=False)  # sampling reads no optimizer state
    workers = ml_collections.ConfigDict(CONFIG.to_dict())
    workers.data.worker_count = 2  # grain's data position is per worker process
    with pytest.raises(IncompatibleCheckpointError, match="data.worker_count: checkpoint 0, this config 2"):
        checkpoints.check_compatible(3, abstract_state(), workers)
    checkpoints.check_compatible(3, abstract_state(), workers, training=False)
    state = checkpoints.restore(3, other_optimizer, None, training=False)
    checkpoints.close()
    assert state["opt_state"] is None and float(state["params"]["w"][0, 0]) == 3.0


def test_a_field_added_since_the_checkpoint_counts_as_its_default(three_steps):
    """The checkpoints were saved before model.head existed: its default, "diffloss", is how they
    were trained, so a config at the default resumes and one with another head is refused."""
    checkpoints = RunCheckpoints(three_steps, read_only=True)
    newer = ml_collections.ConfigDict(CONFIG.to_dict())
    newer.model.head = "diffloss"
    checkpoints.check_compatible(3, abstract_state(), newer)
    newer.model.head = "softmax"
    with pytest.raises(IncompatibleCheckpointError, match="model.head: checkpoint 'diffloss', this config 'softmax'"):
        checkpoints.check_compatible(3, abstract_state(), newer)
    checkpoints.close()


def test_flat_images_are_refused_naming_their_source():
    flat = np.full((2, 4, 4, 3), 7, np.uint8)
    with pytest.raises(Exception, match="every image generated from checkpoint 9 .* one flat colour"):
        require_varied(flat, "checkpoint 9 in /w")
    with pytest.raises(Exception, match="one flat colour"):  # device arrays, checked by jnp
        require_varied(jnp.asarray(flat), "checkpoint 9 in /w")
    require_varied(np.concatenate([flat, flat + 1], axis=1), "checkpoint 9 in /w")
    require_varied(jnp.asarray(np.concatenate([flat, flat + 1], axis=1)), "checkpoint 9 in /w")
    with pytest.raises(Exception, match="one flat colour"):
        generate_images(lambda p, labels, rng: jnp.zeros((len(labels), 4, 4, 3), jnp.uint8), None,
                        np.arange(3), jax.random.key(0), 2, "checkpoint 9 in /w")


HOLD_LOCK = "import sys, time; from marjax.workdir import WorkdirLock; lock = WorkdirLock(sys.argv[1]).__enter__(); " \
            "print('locked', flush=True); time.sleep(600)"


def test_one_training_per_workdir_and_no_stale_lock_after_kill_9(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirInUse, match=f"in use by another training .*pid {holder.pid}, since"):
            with WorkdirLock(str(tmp_path)):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.time() + 30
    with WorkdirLock(str(tmp_path)) as lock:  # the kernel released the killed holder's lock
        assert time.time() < deadline and f"pid {os.getpid()}" in open(lock.path).read()


def test_workdirs_that_cannot_be_written_fail_at_start(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "checkpoints").write_text("")
    with pytest.raises(Exception, match="checkpoints is a file, not a directory"):
        ensure_writable_directory(str(tmp_path / "w" / "checkpoints"), "--workdir's checkpoints")
    with pytest.raises(Exception, match="cannot create .*/w/checkpoints/3: .*/w/checkpoints is a file"):
        ensure_writable_directory(str(tmp_path / "w" / "checkpoints" / "3"), "--workdir")
    (tmp_path / "samples").write_text("")
    with pytest.raises(Exception, match="samples is a file"):
        ensure_writable_directory(str(tmp_path / "samples"), "--mode=sample writes to <workdir>/samples")


def test_a_step_left_half_deleted_by_a_kill_is_not_listed_after_restart(copy_of):
    os.remove(os.path.join(copy_of, "checkpoints", "2", "state", "manifest.ocdbt"))  # Orbax was deleting it
    checkpoints = RunCheckpoints(copy_of, keep=1)
    _, step = checkpoints.restore_newest(abstract_state(), CONFIG, None)
    assert step == 3 and list(checkpoints.manager.all_steps()) == [3]
    checkpoints.close()


def test_logged_means_around_a_preemption_equal_the_uninterrupted_ones(tmp_path):
    losses = [{"loss": 0.1 * (i + 1), "grad_norm": float(i)} for i in range(10)]
    uninterrupted = LogWindow(4)
    expected = {s + 1: m for s in range(10) if (m := uninterrupted.add(s, losses[s], 10)) is not None}
    first = LogWindow(4)
    logged = {s + 1: m for s in range(6) if (m := first.add(s, losses[s], 10)) is not None}
    checkpoints = RunCheckpoints(str(tmp_path))  # preempted after 6 steps: the open window is saved
    checkpoints.save(6, toy_state(6), None, CONFIG, first.values)
    checkpoints.wait()
    resumed = LogWindow(4, checkpoints.saved_log_window(6))
    checkpoints.close()
    logged |= {s + 1: m for s in range(6, 10) if (m := resumed.add(s, losses[s], 10)) is not None}
    assert sorted(expected) == [4, 8, 10] and logged == expected
