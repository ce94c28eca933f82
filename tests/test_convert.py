"""Converters: reference-layout files -> marjax checkpoints, preset inference, and the way back.

Uses the parity fixtures' small reference models (numbers produced by LTH14/mar), so outputs
of converted weights are checked against the reference, not against marjax itself.
"""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax import convert
from marjax.config.defaults import base_config
from marjax.config.loading import load_config_file
from marjax.errors import ConversionError
from marjax.models import mar_torch_layout
from marjax.models.mar import PRESETS, init_params, mar_preset
from marjax.parallel.sharding import make_mesh
from marjax.tasks.mar import model_from_config
from marjax.tasks.registry import make_task
from marjax.tasks.tokenizer_from_config import load_converted_params
from marjax.tokenizers import kl_torch_layout
from marjax.tokenizers.kl import KLTokenizer
from tests.vae_reference import TINY_VAE, load_reference, reference_state

torch = pytest.importorskip("torch")
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def fixture(name: str) -> dict:
    with np.load(os.path.join(FIXTURES, name)) as data:
        return {k: data[k] for k in data.files}


def mar_reference_state() -> dict:
    return {k[len("param/"):]: v.astype(np.float32) for k, v in fixture("mar_tiny_reference.npz").items()
            if k.startswith("param/")}


def tiny_mar_config():
    """The MAR fixture's model (8x8 latents of 4 channels, patch 2, widths 32/48) as a config."""
    c = base_config()
    c.data.update(image_size=8, channels=4, num_classes=10)
    c.tokenizer.kind = "pixels"
    c.model.update(patch_size=2, encoder_width=32, encoder_depth=2, encoder_heads=4, decoder_width=48,
                   decoder_depth=2, decoder_heads=2, buffer_size=4, diffloss_depth=2, diffloss_width=24)
    return c


def save_pth(path, content):
    torch.save(jax.tree.map(lambda v: torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v,
                            content), path)


def test_pickled_objects_need_an_explicit_opt_in(tmp_path):
    path = str(tmp_path / "ckpt.pth")
    save_pth(path, {"model": {"w": np.ones(2, np.float32)}, "args": argparse.Namespace(lr=1.0)})
    with pytest.raises(ConversionError, match="--allow_pickle"):
        convert.load_torch_file(path)
    content = convert.load_torch_file(path, allow_pickle=True)
    np.testing.assert_array_equal(content["model"]["w"], [1.0, 1.0])
    with pytest.raises(ConversionError, match="no such file"):
        convert.load_torch_file(str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_is_inferred_from_shapes(preset):
    shapes = jax.eval_shape(lambda: init_params(mar_preset(preset), jax.random.key(0)))
    state = mar_torch_layout.torch_state_from_params(
        jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s.shape), shapes))
    assert convert.infer_mar_preset(state) == preset


def test_unknown_sizes_and_non_mar_files_are_named():
    state = mar_reference_state()
    with pytest.raises(ConversionError, match="no MAR preset has these sizes"):
        convert.infer_mar_preset(state)
    with pytest.raises(ConversionError, match="not a MAR state dict"):
        convert.infer_mar_preset({"encoder.conv_in.weight": np.zeros((1,))})


def test_weight_copies_are_chosen_explicitly():
    a, b = {"x": np.zeros(1)}, {"x": np.ones(1)}
    assert convert.mar_state_dicts({"model": a, "model_ema": b}, "both") == (a, b)
    assert convert.mar_state_dicts({"model": a, "model_ema": b}, "ema") == (b, b)
    with pytest.raises(ConversionError, match="use --weights=model"):
        convert.mar_state_dicts({"model": a}, "both")


@pytest.mark.parametrize("scan_layers", [False, True])
def test_mar_round_trip_through_torch_layout_is_exact(scan_layers):
    state = mar_reference_state()
    config = tiny_mar_config()
    config.model.scan_layers = scan_layers
    params = mar_torch_layout.params_from_torch_state(state, model_from_config(config))
    if scan_layers:  # blocks stacked in order along a leading layer axis
        np.testing.assert_array_equal(params["decoder_blocks"]["attn"]["qkv"]["kernel"][1],
                                      state["decoder_blocks.1.attn.qkv.weight"].T)
    back = mar_torch_layout.torch_state_from_params(params)
    assert sorted(back) == sorted(state)
    for key in state:
        np.testing.assert_array_equal(back[key], state[key])


def _abstract_state(config):
    return make_task(config, make_mesh()).abstract_state


@pytest.mark.parametrize("scan_layers", [False, True])
def test_converted_mar_workdir_restores_and_exports_back(tmp_path, scan_layers):
    from marjax.checkpoints import RunCheckpoints
    from marjax.errors import IncompatibleCheckpointError

    state = mar_reference_state()
    ema = {k: v + 1.0 for k, v in state.items()}
    config = tiny_mar_config()
    config.model.scan_layers = scan_layers
    workdir = str(tmp_path / "converted")
    convert.write_workdir(state, ema, config, workdir)
    abstract = _abstract_state(config)
    checkpoints = RunCheckpoints(workdir, read_only=True)
    checkpoints.check_compatible(0, abstract, config)
    restored = checkpoints.restore(0, abstract, None)
    # The other layout does not restore silently: the error names the field.
    config.model.scan_layers = not scan_layers
    with pytest.raises(IncompatibleCheckpointError,
                       match=f"model.scan_layers: checkpoint {scan_layers}, this config {not scan_layers}"):
        checkpoints.check_compatible(0, _abstract_state(config), config)
    checkpoints.close()
    np.testing.assert_array_equal(restored.params["z_proj"]["kernel"], state["z_proj.weight"].T)
    np.testing.assert_array_equal(restored.ema_params["z_proj"]["kernel"], ema["z_proj.weight"].T)
    out = str(tmp_path / "back.pth")
    convert.export_torch("mar", workdir, out)
    back = torch.load(out, weights_only=True)
    assert sorted(back["model"]) == sorted(state)
    np.testing.assert_array_equal(back["model_ema"]["diffloss.net.res_blocks.1.adaLN_modulation.1.weight"].numpy(),
                                  ema["diffloss.net.res_blocks.1.adaLN_modulation.1.weight"])
    with pytest.raises(ConversionError, match="already holds checkpoints"):
        convert.write_workdir(state, ema, config, workdir)


def test_converted_vae_matches_the_reference_through_the_tokenizer(tmp_path):
    reference = load_reference()
    state = reference_state(reference)
    path = str(tmp_path / "tokenizer.ckpt")
    save_pth(path, {"model": state})
    directory = str(tmp_path / "vae")
    convert.convert_kl16(convert.load_torch_file(path), directory, model=TINY_VAE)
    tokenizer = KLTokenizer(TINY_VAE, load_converted_params(TINY_VAE, directory), scale=0.5)
    decoded = tokenizer.decode(jnp.asarray(reference["latents"]) * 0.5)
    np.testing.assert_allclose(decoded, reference["decoded"], rtol=1e-4, atol=1e-4)
    # Encoding samples the reference posterior with the given key, then scales.
    mean, logvar = np.split(reference["moments"], 2, axis=-1)
    key = jax.random.key(7)
    expected = mean + np.exp(0.5 * np.clip(logvar, -30, 20)) * np.asarray(jax.random.normal(key, mean.shape))
    np.testing.assert_allclose(tokenizer.encode(jnp.asarray(reference["images"]), key) / 0.5, expected,
                               rtol=1e-4, atol=1e-4)
    back = kl_torch_layout.torch_state_from_params(load_converted_params(TINY_VAE, directory))
    assert sorted(back) == sorted(state)
    for key in state:
        np.testing.assert_array_equal(back[key], state[key])


def test_converted_workdir_samples_and_fine_tunes_through_the_cli(tmp_path):
    """A reference-layout state dict of a digits-shaped model -> workdir -> --mode=sample and training."""
    import subprocess

    from tests.test_main_program import REPO, TINY_OVERRIDES, command, env

    config = load_config_file(os.path.join(REPO, "configs", "digits.py"))
    for override in TINY_OVERRIDES:
        key, value = override[len("--config."):].split("=")
        section, field = key.split(".")
        config[section][field] = type(config[section][field])(value)
    params = init_params(model_from_config(config), jax.random.key(3))
    state = mar_torch_layout.torch_state_from_params(params)
    workdir = str(tmp_path / "converted")
    convert.write_workdir(state, state, config, workdir)
    for extra in (["--mode=sample"], ["--config.train.num_steps=2"]):
        result = subprocess.run(command(workdir, *extra), cwd=REPO, env=env(), capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(os.path.join(workdir, "samples", "step_0.npz"))
    assert "holds no data position" in result.stderr
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))
