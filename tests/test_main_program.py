"""End-to-end runs of `python -m marjax.main` on the digits with a tiny model (subprocesses).

Covers: train with checkpoints, resume, sample (a rerun loads every program from the compilation cache),
evaluate (on 8 CPU devices); kill -9 then resume reproduces the
uninterrupted losses step by step; SIGTERM saves and exits 0; one train-step compilation per
run; the bad-input errors (incompatible checkpoint, NaN loss, missing data).
"""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from configs import digits
from marjax.edit import check_edit_config, keep_mask
from marjax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_OVERRIDES = [
    "--config.model.encoder_width=32", "--config.model.encoder_depth=1", "--config.model.encoder_heads=2",
    "--config.model.decoder_width=32", "--config.model.decoder_depth=1", "--config.model.decoder_heads=2",
    "--config.model.diffloss_depth=1", "--config.model.diffloss_width=32",
    "--config.train.global_batch_size=16", "--config.train.log_every_steps=1",
    "--config.sample.num_iter=4", "--config.sample.num_diffusion_steps=5",
    "--config.sample.num_images=10", "--config.sample.batch_size=10",
]


# Multi-device runs compile an SPMD program per mesh; XLA's cheaper CPU code generation halves
# their compile time, and their losses still agree with the one-device runs to the stated rtol.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def fake_devices(count: int) -> dict:
    """Environment for a subprocess with `count` CPU devices, compiled the cheap way."""
    return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={count} {FAST_COMPILE_FLAGS}"}


def command(workdir, *extra):
    return [sys.executable, "-m", "marjax.main", "--config=configs/digits.py", f"--workdir={workdir}",
            *TINY_OVERRIDES, *extra]


def env():
    return {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}


def run(workdir, *extra, check=True, extra_env=None):
    result = subprocess.run(command(workdir, *extra), cwd=REPO, env={**env(), **(extra_env or {})},
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stderr[-4000:]}")
    return result


def scalars(workdir, tag: str) -> dict[int, float]:
    """step -> value of `tag` from the TensorBoard event files the run wrote."""
    import tensorflow as tf

    found = {}
    for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    found[event.step] = float(tf.make_ndarray(value.tensor))
    return found


def losses(workdir) -> dict[int, float]:
    return scalars(workdir, "loss")


def saved_steps(workdir) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """12 steps in one go, checkpoints every 4 steps, 20 samples scored with the digits network at
    step 12."""
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    result = run(workdir, "--config.train.num_steps=12", "--config.train.checkpoint_every_steps=4",
                 "--config.train.eval_every_steps=12", "--config.train.eval_num_images=20",
                 "--config.eval.batch_size=10", extra_env={"JAX_LOG_COMPILES": "1"})
    return workdir, result.stderr


def test_train_writes_checkpoints_metrics_and_compiles_once(uninterrupted):
    workdir, log = uninterrupted
    assert saved_steps(workdir) == [4, 8, 12]
    assert sorted(losses(workdir)) == list(range(1, 13))
    assert all(np.isfinite(v) for v in losses(workdir).values())
    assert list(scalars(workdir, "train_eval/fid")) == [12] and 0 <= scalars(workdir, "train_eval/accuracy")[12] <= 1
    train_step_compiles = [line for line in log.splitlines() if "Compiling" in line and "train_step" in line]
    assert len(train_step_compiles) == 1, train_step_compiles


def test_resume_after_kill_reproduces_losses(uninterrupted, tmp_path):
    reference = losses(uninterrupted[0])
    workdir = str(tmp_path)
    args = ("--config.train.num_steps=12", "--config.train.checkpoint_every_steps=4")
    process = subprocess.Popen(command(workdir, *args), cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while 4 not in saved_steps(workdir) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 12 not in saved_steps(workdir)
    assert store_counts(run(workdir, *args)) == (1, 1, 0)  # the train step, loaded while the state restored
    resumed = losses(workdir)
    assert sorted(resumed) == list(range(1, 13))
    np.testing.assert_array_equal([resumed[s] for s in range(1, 13)], [reference[s] for s in range(1, 13)])


def cache_counts(result: subprocess.CompletedProcess) -> tuple[int, int]:
    """(programs loaded from the compilation cache, programs compiled) of a finished run."""
    found = re.search(r"compilation cache: (\d+) programs loaded, (\d+) compiled", result.stderr)
    assert found, result.stderr[-2000:]
    return int(found.group(1)), int(found.group(2))


def store_counts(result: subprocess.CompletedProcess) -> tuple[int, int, int]:
    """(programs loaded from marjax's store, of them preloaded, programs compiled into it) of a run."""
    found = re.search(r"stored programs: (\d+) loaded \((\d+) preloaded\), (\d+) compiled", result.stderr)
    assert found, result.stderr[-2000:]
    return int(found.group(1)), int(found.group(2)), int(found.group(3))


def test_sample_mode_writes_grid_and_npz_and_a_rerun_compiles_nothing(uninterrupted, tmp_path):
    """The first run fills an empty compilation cache and stores the sampler whole; the same command
    again loads every program and gives the same images; a config value baked into the program,
    or another device count, compiles anew instead of reusing a stale program."""
    workdir, _ = uninterrupted
    cached = (f"--config.compile_cache.dir={tmp_path}", "--mode=sample", "--config.sample.classes=3,7")
    first = run(workdir, *cached)
    loaded, compiled = cache_counts(first)
    assert loaded == 0 and compiled > 0 and store_counts(first) == (0, 0, 1)
    data = np.load(os.path.join(workdir, "samples", "step_12.npz"))
    assert data["images"].shape == (10, 8, 8, 1) and data["images"].dtype == np.uint8
    np.testing.assert_array_equal(data["labels"], [3] * 5 + [7] * 5)
    assert os.path.getsize(os.path.join(workdir, "samples", "step_12.png")) > 0

    again = run(workdir, *cached)
    assert cache_counts(again)[1] == 0 and store_counts(again) == (1, 1, 0)  # loaded while the params restored
    np.testing.assert_array_equal(np.load(os.path.join(workdir, "samples", "step_12.npz"))["images"], data["images"])
    assert store_counts(run(workdir, *cached, "--config.sample.num_iter=3")) == (0, 0, 1)
    two_devices = run(workdir, *cached, extra_env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert cache_counts(two_devices)[1] > 0 and store_counts(two_devices) == (0, 0, 1)


def test_edit_mode_keeps_the_pixels_outside_the_box(uninterrupted, tmp_path):
    """A digit as a PNG, its bottom half regenerated as a 3: (original, masked, result) rows, the top
    half of every result the digit's own pixels (pixel tokens are kept exactly)."""
    workdir, _ = uninterrupted
    digit = np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)
    Image.fromarray(digit).save(tmp_path / "digit.png")
    run(workdir, "--mode=edit", f"--config.edit.image={tmp_path / 'digit.png'}", "--config.edit.box=0,4,8,8",
        "--config.edit.label=3", "--config.edit.num_samples=3")
    data = np.load(os.path.join(workdir, "edits", "step_12.npz"))
    np.testing.assert_array_equal(data["original"][..., 0], digit)
    assert data["results"].shape == (3, 8, 8, 1) and data["keep"][:4].all() and not data["keep"][4:].any()
    np.testing.assert_array_equal(data["results"][:, :4, :, 0], np.broadcast_to(digit[:4], (3, 4, 8)))
    assert os.path.getsize(os.path.join(workdir, "edits", "step_12.png")) > 0


@pytest.mark.parametrize("edit, error, message", [
    (dict(box="0,4,8,8", label=3), FileNotFoundError, "none.png does not exist"),
    (dict(label=3), ConfigError, "exactly one of edit.box"),
    (dict(box="0,4,9,8", label=3), ConfigError, "not a non-empty box inside the 8x8 image"),
    (dict(box="0,4,8", label=3), ConfigError, "four integers"),
    (dict(box="0,4,8,8"), ConfigError, "edit.label=-1"),
])
def test_edit_settings_that_cannot_run_fail_before_anything_loads(tmp_path, edit, error, message):
    config = digits.get_config()
    config.edit.update(image=str(tmp_path / "none.png"), **edit)
    with pytest.raises(error, match=message):
        check_edit_config(config)


def test_an_edit_box_covering_everything_under_outpaint_is_refused():
    config = digits.get_config()
    config.edit.update(box="0,0,8,8", outpaint=True)
    with pytest.raises(ConfigError, match="regenerates no pixel"):
        keep_mask(config)


def test_eval_mode_on_eight_devices_writes_metrics_and_pngs(uninterrupted):
    """20 samples in batches of 10, rounded up to 16 for the 8 devices (the padding is dropped),
    scored with the digits classifier against the real digits."""
    workdir, _ = uninterrupted
    result = run(workdir, "--mode=eval", "--config.eval.num_images=20", "--config.eval.batch_size=10",
                 "--config.eval.save_png=true", extra_env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert "20 samples in batches of 16 on 8 devices" in result.stderr
    with open(os.path.join(workdir, "eval_step_12.json")) as f:
        report = json.load(f)
    assert report["feature_network"] == "digits" and report["num_images"] == 20 and report["step"] == 12
    assert report["fid"] > 0 and 1 <= report["inception_score"] <= 10
    for key in ("precision", "recall", "accuracy", "classifier_heldout_accuracy"):
        assert 0 <= report[key] <= 1, key
    assert scalars(workdir, "eval/fid") == {12: pytest.approx(report["fid"], rel=1e-6)}
    pngs = sorted(os.listdir(os.path.join(workdir, "eval_step_12")))
    assert len(pngs) == 20 and pngs[0] == "000000_class0.png" and pngs[-1] == "000019_class9.png"


def test_eval_mode_without_inception_weights_names_the_file(uninterrupted):
    result = run(uninterrupted[0], "--mode=eval", "--config.eval.feature_network=inception", check=False)
    assert result.returncode != 0 and "pt_inception-2015-12-05-6726825d.pth" in result.stderr


def test_sigterm_saves_and_exits_zero(tmp_path):
    workdir = str(tmp_path / "w")
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command(workdir, "--config.train.num_steps=100000",
                                           "--config.train.checkpoint_every_steps=100000"),
                                   cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + 300
        # The first metrics line (step 1) shows a step has run, so the save is past step 0.
        while "grad_norm=" not in log_path.read_text() and time.time() < deadline:
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=300)
    stderr = log_path.read_text()
    assert process.returncode == 0, stderr[-4000:]
    steps = saved_steps(workdir)
    assert len(steps) == 1 and 0 < steps[0] < 100000
    assert f"preempted: saved the checkpoint at step {steps[0]}" in stderr


def start_and_wait_for(workdir, log_path, text: str, *extra) -> subprocess.Popen:
    """A long training run in the background, once its log (stderr) shows `text`."""
    process = subprocess.Popen(command(workdir, "--config.train.num_steps=100000",
                                       "--config.train.checkpoint_every_steps=100000", *extra),
                               cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=open(log_path, "w"))
    deadline = time.time() + 300
    while text not in log_path.read_text() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    return process


def test_sigterm_before_the_first_step_exits_zero_saving_nothing(tmp_path):
    process = start_and_wait_for(str(tmp_path / "w"), tmp_path / "log.txt", "parameters;")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 0, (tmp_path / "log.txt").read_text()[-3000:]
    assert "preempted before the first step: nothing to save" in (tmp_path / "log.txt").read_text()
    assert saved_steps(str(tmp_path / "w")) == []


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie left for a parent that does not reap)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.split("/")[2]))
    return found


def test_ctrl_c_in_the_first_compile_saves_and_grain_workers_die_with_a_killed_run(tmp_path):
    log_path = tmp_path / "log.txt"
    process = start_and_wait_for(str(tmp_path / "w"), log_path, "the first step compiles",
                                 "--config.data.worker_count=2")
    process.send_signal(signal.SIGINT)  # while compiling: stops like SIGTERM after the step, no crash
    assert process.wait(timeout=300) == 0, log_path.read_text()[-3000:]
    assert "preempted: saved the checkpoint at step 1" in log_path.read_text()

    process = start_and_wait_for(str(tmp_path / "w"), log_path, "grad_norm=", "--config.data.worker_count=2")
    workers = children(process.pid)
    process.kill()
    process.wait()
    deadline = time.time() + 30
    while any(map(alive, workers)) and time.time() < deadline:
        time.sleep(0.2)
    assert len(workers) >= 2 and not any(map(alive, workers))


def test_incompatible_checkpoint_names_parameters(uninterrupted):
    result = run(uninterrupted[0], "--config.model.encoder_width=64", check=False)
    assert result.returncode != 0
    assert "params/class_emb/embedding: checkpoint (10, 32), this config (10, 64)" in result.stderr
    assert "model.encoder_width: checkpoint 32, this config 64" in result.stderr


def test_nan_loss_stops_and_sets_aside_the_checkpoint_that_gave_it(tmp_path):
    workdir = str(tmp_path)
    result = run(workdir, "--config.train.num_steps=6", "--config.train.checkpoint_every_steps=1",
                 "--config.train.warmup_epochs=0", "--config.train.base_lr=1e30", check=False)
    assert result.returncode != 0
    # State 1 is finite, but so large that its loss is NaN: checkpoint 1 is set aside, not called good.
    assert "at step 1: training stopped; checkpoint 1, the state that gave this loss, moved to" in result.stderr
    assert "there is no good checkpoint in" in result.stderr, result.stderr[-3000:]
    assert saved_steps(workdir) == [] and os.listdir(os.path.join(workdir, "diverged_checkpoints")) == ["1"]


def test_missing_image_folder_fails_before_compiling(tmp_path):
    result = run(str(tmp_path / "w"), "--config.data.source=image_folder",
                 f"--config.data.path={tmp_path / 'nowhere'}", check=False)
    assert result.returncode != 0 and "no such directory" in result.stderr
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_unknown_config_key_lists_valid_keys(tmp_path):
    result = run(str(tmp_path), "--config.train.lr=1", check=False)
    assert result.returncode != 0
    assert "unknown config key 'train.lr'" in result.stderr and "train.base_lr" in result.stderr


def test_resume_onto_an_eight_device_fsdp_mesh(uninterrupted, tmp_path):
    """Checkpoint 8 of the one-device run restores onto a 2x4 (data x fsdp) mesh of CPU devices
    and continues to the same losses (up to the reduction order of the sharded sums)."""
    import shutil

    workdir = str(tmp_path / "w")
    os.makedirs(os.path.join(workdir, "checkpoints"))
    shutil.copytree(os.path.join(uninterrupted[0], "checkpoints", "8"), os.path.join(workdir, "checkpoints", "8"))
    run(workdir, "--config.train.num_steps=12", "--config.train.checkpoint_every_steps=4",
        "--config.mesh.fsdp=4", "--config.mesh.fsdp_min_size=256", extra_env=fake_devices(8))
    reference, resumed = losses(uninterrupted[0]), losses(workdir)
    assert sorted(resumed) == [9, 10, 11, 12]
    np.testing.assert_allclose([resumed[s] for s in range(9, 13)], [reference[s] for s in range(9, 13)],
                               rtol=2e-4)
