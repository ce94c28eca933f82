"""Unconditional models (`data.num_classes=0`): a flat folder of digit images trains a tiny MAR end
to end in-process (training grid, `--mode=sample`'s files, `--mode=eval`, the API) with no class anywhere; every
generating family conditions only on its null class; settings that need classes are refused
before anything loads."""
import jax
import numpy as np
import pytest
from PIL import Image

from marjax import api
from marjax.config.defaults import base_config
from marjax.data.digits import DigitsSource
from marjax.convert import export_torch
from marjax.edit import check_edit_config
from marjax.errors import ConfigError, ConversionError
from marjax.evaluate import evaluate_workdir
from marjax.parallel.sharding import make_mesh
from marjax.sample import sample_from_workdir
from marjax.tasks.registry import check_config, make_task
from marjax.train import train_and_evaluate
from tests.tiny_configs import TINY_CONFIGS, tiny_mar

GENERATING = ("mar", "ar", "gpt", "var")


def unconditional(config):
    """`config` without classes; guidance at the task's "none"."""
    config.data.num_classes = 0
    config.sample.cfg = base_config(config.task).sample.cfg
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, workdir) of a tiny MAR trained 4 steps on 64 digits written flat into one folder."""
    folder = tmp_path_factory.mktemp("flat_digits")
    digits = DigitsSource(8)
    for i in range(64):
        Image.fromarray(digits[i]["image"][..., 0]).save(folder / f"{i:03d}.png")
    config = unconditional(tiny_mar(None))
    config.data.update(source="image_folder", path=str(folder))
    config.train.update(num_steps=4, log_every_steps=2, checkpoint_every_steps=4, sample_every_steps=4)
    config.sample.update(num_images=6, batch_size=6)
    workdir = str(tmp_path_factory.mktemp("run"))
    state = train_and_evaluate(config, workdir)
    assert int(state.step) == 4 and "class_emb" not in state.ema_params
    return config, workdir


def test_the_training_grid_and_samples_carry_no_labels(trained):
    config, workdir = trained
    with np.load(f"{workdir}/samples/train_step_4_ema.npz") as grid:
        assert sorted(grid) == ["images"] and grid["images"].shape == (4, 8, 8, 1)
    png = sample_from_workdir(config, workdir)
    with np.load(png[:-4] + ".npz") as samples:
        assert sorted(samples) == ["images"] and samples["images"].shape == (6, 8, 8, 1)
    assert Image.open(png).size == (3 * 9 * 19, 2 * 9 * 19)  # 3 x 2 cells of 8 + 1 px, x19: no class margin


def test_eval_scores_without_accuracy(trained):
    config, workdir = trained
    config = config.copy_and_resolve_references()
    config.eval.update(num_images=12, batch_size=6)
    report = evaluate_workdir(config, workdir)
    assert report["num_images"] == 12 and np.isfinite(report["fid"]) and "accuracy" not in report


def test_the_api_takes_a_count_and_refuses_classes(trained):
    config, workdir = trained
    run = api.load(config, workdir)
    first, again = run.generate(3, seed=1), run.generate(3, seed=1)
    assert first.shape == (3, 8, 8, 1) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    with pytest.raises(ConfigError, match="unconditional model; give a count"):
        run.generate([1, 2])
    with pytest.raises(ConfigError, match="label=3: data.num_classes=0 .* leave label=None"):
        run.edit(np.zeros((8, 8, 1), np.uint8), np.ones((8, 8), bool), label=3)


def test_the_reference_layout_is_refused_naming_why(trained, tmp_path):
    with pytest.raises(ConversionError, match="unconditional MAR .* LTH14/mar's model always conditions on a class"):
        export_torch("mar", trained[1], str(tmp_path / "mar.pth"))
    assert not (tmp_path / "mar.pth").exists()


@pytest.mark.parametrize("field, value, message", [
    ("sample.cfg", 2.0, "sample.cfg=2.0 has no effect .*no classes to guide towards.* default: sample.cfg=1.0"),
    ("sample.classes", "3", "sample.classes='3': data.num_classes=0 .* leave sample.classes empty"),
    ("data.num_classes", -1, "data.num_classes must be >= 1, or 0 for an unconditional model"),
])
def test_settings_that_need_classes_are_refused(field, value, message):
    config = unconditional(tiny_mar(None))
    section, key = field.split(".")
    config[section][key] = value
    with pytest.raises(ConfigError, match=message):
        check_config(config)


def test_an_edit_label_is_refused(tmp_path):
    config = unconditional(tiny_mar(None))
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    config.edit.update(image=str(image), box="0,0,4,8", label=3)
    with pytest.raises(ConfigError, match="edit.label=3: data.num_classes=0 is an unconditional model"):
        check_edit_config(config)
    config.edit.label = -1
    check_edit_config(config)


@pytest.mark.parametrize("name", GENERATING)
def test_every_family_conditions_only_on_the_null_class(name, tmp_path):
    """MAR and the AR baselines lose their class table (`fake_latent` conditions every sample); GPT
    and VAR keep one row, their null class, which label 0 selects."""
    config = unconditional(TINY_CONFIGS[name](tmp_path))
    check_config(config)
    params = make_task(config, make_mesh(devices=jax.devices()[:1])).abstract_state.params
    tables = {path: leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params)
              if "class" in jax.tree_util.keystr(path) or "cls" in jax.tree_util.keystr(path)}
    if name in ("mar", "ar"):
        assert tables == {} and params["fake_latent"].shape[0] == 1
    else:
        assert [shape[0] for shape in tables.values()] == [1]
