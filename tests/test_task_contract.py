"""The Task contract, once for every registered family (`marjax.tasks.registry.TASKS`): its tiny
config checks, initialises on the mesh, steps with one compilation, round-trips a checkpoint,
and generates (or visualises) the same images twice from one rng."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.checkpoints import RunCheckpoints
from marjax.compile_report import compile_report
from marjax.data.digits import DigitsSource
from marjax.data.image_ops import to_model_range, to_uint8
from marjax.parallel.sharding import make_mesh
from marjax.tasks.registry import TASKS, check_config, make_task
from marjax.tasks.train_state import jit_train_step
from tests.tiny_configs import TINY_CONFIGS


def test_every_registered_task_has_a_tiny_config():
    assert sorted(TINY_CONFIGS) == sorted(TASKS)


@pytest.fixture(scope="module", params=sorted(TASKS))
def run(request, tmp_path_factory):
    """(config, task, source, state after 3 steps, trace count of the step) for one family."""
    config = TINY_CONFIGS[request.param](tmp_path_factory.mktemp(request.param))
    check_config(config)
    source = DigitsSource(config.data.image_size)
    mesh = make_mesh(devices=jax.devices()[:1])
    task = make_task(config, mesh, source=source)
    traces = []

    def counted_step(state, batch, rng, frozen):
        traces.append(1)
        return task.step(state, batch, rng, frozen)

    step = jit_train_step(counted_step, task.shardings, mesh)
    state = jax.jit(task.init, out_shardings=task.shardings)(jax.random.key(0))
    assert jax.tree.structure(state) == jax.tree.structure(task.abstract_state)
    assert [x.shape for x in jax.tree.leaves(state)] == [x.shape for x in jax.tree.leaves(task.abstract_state)]
    n = config.train.global_batch_size
    for i in range(3):
        records = [source[(i * n + j) % len(source)] for j in range(n)]
        batch = {"images": jnp.asarray(np.stack([to_model_range(r["image"]) for r in records])),
                 "labels": jnp.asarray([r["label"] for r in records], jnp.int32)}
        state, metrics = step(state, task.prepare_batch(batch, jax.random.key(i)), jax.random.key(1), task.frozen)
        assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    return config, task, state, len(traces)


def test_steps_compile_once(run):
    _, _, state, traces = run
    assert traces == 1 and int(state.step) == 3


def test_compile_mode_reports_the_step(run):
    """`--mode=compile` lowers the family's step from abstract inputs (its abstract batch must match
    what prepare_batch gives, or lowering fails) and counts its state."""
    config, task, _, _ = run
    setup, memory, cost = compile_report(config, jax.devices()[:1])
    assert setup["num_params"] == task.num_params
    assert memory["per_device_bytes"]["params"] >= 4 * task.num_params and cost["flops_per_device"] > 0


def test_checkpoint_round_trip(run, tmp_path):
    config, task, state, _ = run
    checkpoints = RunCheckpoints(str(tmp_path))
    checkpoints.save(3, state, None, config)
    checkpoints.wait()
    restored, step = checkpoints.restore_newest(task.abstract_state, config, None)
    without_optimizer = checkpoints.restore(3, task.abstract_state, None, training=False)
    checkpoints.close()
    assert step == 3
    for saved, back in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(back))
    np.testing.assert_array_equal(*(jax.tree.leaves(task.generation_params(s, True))[0]
                                    for s in (state, without_optimizer)))


def test_same_rng_same_images(run):
    config, task, state, _ = run
    if task.generate is None:  # a family that does not generate shows its training grid instead
        first, labels = task.visualize(state, jax.random.key(5))
        second, _ = task.visualize(state, jax.random.key(5))
    else:
        params = task.generation_params(state, True)
        labels = jnp.arange(4, dtype=jnp.int32) % config.data.num_classes
        first, second = (np.asarray(task.generate(params, labels, jax.random.key(5))) for _ in range(2))
        other = np.asarray(task.generate(params, labels, jax.random.key(6)))
        assert not np.array_equal(first, other)
    assert first.dtype == np.uint8 and first.shape[0] == len(labels)
    assert first.shape[1:] == (config.data.image_size, config.data.image_size, config.data.channels)
    np.testing.assert_array_equal(first, second)


@pytest.fixture(scope="module")
def digits_to_edit():
    """Four digits (B, 16, 16, 1) in [-1, 1] and their labels; each test crops its image size."""
    source = DigitsSource(16)
    return np.stack([to_model_range(source[i]["image"]) for i in range(4)]), np.arange(4, dtype=np.int32)


def edit(config, task, state, digits, keep, seed):
    images = jnp.asarray(digits[0][:, :config.data.image_size, :config.data.image_size])
    keeps = jnp.asarray(np.broadcast_to(keep, images.shape[:3]))
    return np.asarray(task.edit(task.generation_params(state, True), images, keeps, jnp.asarray(digits[1]),
                                jax.random.key(seed)))


def test_edit_with_every_pixel_kept_gives_the_same_image_for_any_rng(run, digits_to_edit):
    """Every token known: nothing is drawn (the tokenizer's reconstruction, whatever the rng)."""
    config, task, state, _ = run
    if task.edit is None:
        pytest.skip(f"task {config.task!r} does not edit")
    size = config.data.image_size
    first, second = (edit(config, task, state, digits_to_edit, np.ones((size, size), bool), s) for s in (1, 2))
    assert first.dtype == np.uint8 and first.shape == (4, size, size, config.data.channels)
    np.testing.assert_array_equal(first, second)


def test_edit_regenerates_the_right_half_only(run, digits_to_edit):
    """Left half kept: the same rng gives the same edit, another rng another right half; on pixel
    tokens the left half comes back exactly."""
    config, task, state, _ = run
    if task.edit is None:
        pytest.skip(f"task {config.task!r} does not edit")
    size = config.data.image_size
    keep = np.arange(size)[None, :].repeat(size, 0) < size // 2
    first, again, other = (edit(config, task, state, digits_to_edit, keep, s) for s in (1, 1, 2))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[:, :, size // 2:], other[:, :, size // 2:])
    if config.tokenizer.kind == "pixels":
        original = np.asarray(to_uint8(digits_to_edit[0][:, :size, :size]))
        np.testing.assert_array_equal(first[:, :, :size // 2], original[:, :, :size // 2])
        np.testing.assert_array_equal(other[:, :, :size // 2], original[:, :, :size // 2])
