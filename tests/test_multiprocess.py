"""Two processes joined through `jax.distributed` on localhost (launch/local_multiprocess.sh):
train on 2 x 4 CPU devices with FSDP, Orbax checkpoints written by both processes into one
workdir; then resume from a checkpoint onto 2 x 2 devices of pure data parallelism."""
import os
import shutil
import subprocess

import numpy as np
import pytest

from tests.test_main_program import FAST_COMPILE_FLAGS, REPO, command, env, losses, saved_steps

LAUNCHER = os.path.join(REPO, "launch", "local_multiprocess.sh")
STEPS = ("--config.train.num_steps=4", "--config.train.checkpoint_every_steps=2",
         "--config.train.sample_every_steps=0", "--config.mesh.fsdp_min_size=256")


def launch(workdir, log_dir, devices_per_process, *extra):
    """Two processes of `devices_per_process` CPU devices each run the tiny digits command."""
    result = subprocess.run(["bash", LAUNCHER, "2", str(devices_per_process), *command(workdir, *STEPS, *extra)],
                            cwd=REPO, env={**env(), "LOG_DIR": str(log_dir), "XLA_FLAGS": FAST_COMPILE_FLAGS},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """4 steps on a 2 (data) x 4 (fsdp) mesh, checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("multiprocess")
    workdir = str(root / "w")
    launch(workdir, root / "logs", 4, "--config.mesh.fsdp=4")
    return workdir, root


def test_two_processes_train_and_checkpoint(two_process_run):
    workdir, root = two_process_run
    assert saved_steps(workdir) == [2, 4]
    assert sorted(losses(workdir)) == [1, 2, 3, 4] and all(np.isfinite(list(losses(workdir).values())))
    for i in range(2):
        log = (root / "logs" / f"process_{i}.log").read_text()
        assert "mesh {'data': 2, 'fsdp': 4, 'tensor': 1}" in log and "done: 4 steps" in log


def test_two_processes_resume_onto_four_data_parallel_devices(two_process_run, tmp_path):
    """Checkpoint 2 (8 devices, FSDP over 4) restores onto 2 x 2 devices, pure data parallel, and
    continues to the same losses (rtol 2e-4: only the reduction order of sharded sums differs).
    Both runs have two processes, so each reads the same data shard."""
    workdir = str(tmp_path / "w")
    os.makedirs(os.path.join(workdir, "checkpoints"))
    shutil.copytree(os.path.join(two_process_run[0], "checkpoints", "2"), os.path.join(workdir, "checkpoints", "2"))
    launch(workdir, tmp_path / "logs", 2)
    assert "mesh {'data': 4, 'fsdp': 1, 'tensor': 1}" in (tmp_path / "logs" / "process_0.log").read_text()
    reference, resumed = losses(two_process_run[0]), losses(workdir)
    assert sorted(resumed) == [3, 4] and saved_steps(workdir) == [2, 4]
    np.testing.assert_allclose([resumed[3], resumed[4]], [reference[3], reference[4]], rtol=2e-4)
