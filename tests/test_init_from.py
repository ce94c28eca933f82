"""Fine-tuning from another run's params (`init_from`): what is kept, resized and re-initialised,
on the tiny MAR (other classes, a larger token grid) and on a table with a null-class row."""
import json
import os

import jax
import numpy as np
import pytest

from marjax.checkpoints import RunCheckpoints
from marjax.errors import ConfigError
from marjax.parallel.sharding import make_mesh
from marjax.tasks.init_from import check_init_from, merge_params, start_from
from marjax.tasks.registry import make_task
from tests.tiny_configs import tiny_mar


def mar_task(image_size: int, num_classes: int):
    config = tiny_mar(None)
    config.data.update(image_size=image_size, num_classes=num_classes)
    return config, make_task(config, make_mesh(devices=jax.devices()[:1]))


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A saved tiny MAR: 8x8 digits (4x4 tokens of 2x2 pixels), 10 classes, every param moved off its init."""
    config, task = mar_task(8, 10)
    state = jax.jit(task.init)(jax.random.key(0))
    moved = jax.tree.map(lambda x: x + 0.5, state.params)
    state = state.replace(params=moved, ema_params=jax.tree.map(lambda x: x + 1.0, moved))
    directory = str(tmp_path_factory.mktemp("source"))
    checkpoints = RunCheckpoints(directory)
    checkpoints.save(7, state, None, config)
    checkpoints.close()
    return directory, jax.device_get(state.ema_params)


def test_a_new_grid_and_more_classes_keep_what_fits(source_run, tmp_path):
    directory, source = source_run
    config, task = mar_task(16, 12)  # 8x8 tokens, two more classes
    fresh = jax.jit(task.init)(jax.random.key(1))
    state = start_from(fresh, directory, 12, task.shardings, str(tmp_path))
    # Separate buffers: the train step donates params and EMA params each.
    assert (state.params["z_proj"]["kernel"].unsafe_buffer_pointer()
            != state.ema_params["z_proj"]["kernel"].unsafe_buffer_pointer())
    params, fresh_params = jax.device_get(state.params), jax.device_get(fresh.params)
    np.testing.assert_array_equal(params["z_proj"]["kernel"], source["z_proj"]["kernel"])
    table = params["class_emb"]["embedding"]
    np.testing.assert_array_equal(table[:10], source["class_emb"]["embedding"])
    np.testing.assert_array_equal(table[10:], fresh_params["class_emb"]["embedding"][10:])
    positions = params["encoder_pos_embed_learned"]
    assert positions.shape == (1, 4 + 64, 32)
    np.testing.assert_array_equal(positions[:, :4], source["encoder_pos_embed_learned"][:, :4])  # the buffer
    np.testing.assert_array_equal(jax.device_get(state.ema_params)["z_proj"]["kernel"], params["z_proj"]["kernel"])
    with open(tmp_path / "init_from.json") as f:
        report = json.load(f)
    assert report["step"] == 7 and report["reinitialised"] == []
    assert sorted(line.split(":")[0] for line in report["resized"]) == [
        "class_emb/embedding", "decoder_pos_embed_learned", "diffusion_pos_embed_learned",
        "encoder_pos_embed_learned"]
    assert "z_proj/kernel" in report["kept"]


def test_an_unconditional_model_drops_the_class_table_and_keeps_the_null_embedding(source_run, tmp_path):
    directory, source = source_run
    _, task = mar_task(8, 0)
    state = start_from(jax.jit(task.init)(jax.random.key(1)), directory, 0, task.shardings, str(tmp_path))
    np.testing.assert_array_equal(jax.device_get(state.params)["fake_latent"], source["fake_latent"])
    assert "class_emb" not in state.params
    with open(tmp_path / "init_from.json") as f:
        report = json.load(f)
    assert report["dropped"] == ["class_emb/embedding"] and report["reinitialised"] == []


def test_positions_are_resampled_over_the_grid():
    """A grid whose rows are the row index comes back as a smooth ramp at the new size."""
    rows = np.repeat(np.arange(4.0), 4)[None, :, None] * np.ones((1, 1, 3))
    source = {"pos_embed": np.concatenate([np.full((1, 2, 3), 9.0), rows], axis=1)}
    merged, report = merge_params({"pos_embed": np.zeros((1, 2 + 64, 3))}, source, 10)
    grid = merged["pos_embed"][0, 2:, 0].reshape(8, 8)
    np.testing.assert_array_equal(merged["pos_embed"][0, :2], 9.0)
    assert np.all(np.diff(grid[:, 0]) >= 0) and grid[0, 0] < 0.5 and grid[-1, 0] > 2.5
    np.testing.assert_allclose(grid, grid[:, :1] * np.ones((1, 8)), atol=1e-6)  # constant along each row
    assert report["resized"] == ["pos_embed: (1, 18, 3) -> (1, 66, 3) (positions, bicubic)"]


def test_a_null_class_row_moves_to_the_end_and_another_width_is_refused():
    source = {"cls_embedding": {"embedding": np.arange(11.0)[:, None] * np.ones((1, 4))}}  # 10 classes + null
    fresh = {"cls_embedding": {"embedding": -np.ones((13, 4))}, "head": {"kernel": np.zeros((4, 4))}}
    merged, report = merge_params(fresh, source, 12)
    table = merged["cls_embedding"]["embedding"][:, 0]
    np.testing.assert_array_equal(table, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, -1, -1, 10])
    assert report["reinitialised"] == ["head/kernel"]
    with pytest.raises(ConfigError, match="(?s)another architecture.*head/kernel: source \\(4, 8\\), this model \\(4, 4\\)"):
        merge_params(fresh, {**source, "head": {"kernel": np.zeros((4, 8))}}, 12)


def test_a_directory_without_checkpoints_is_named(tmp_path):
    with pytest.raises(ConfigError, match=f"init_from='{tmp_path}' holds no checkpoints folder"):
        check_init_from(str(tmp_path))
    check_init_from("")
    assert not os.path.exists(tmp_path / "init_from.json")
