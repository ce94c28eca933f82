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
from marjax.tasks.tokenizer_from_config import abstract_tokenizer_params, load_converted_params, tokenizer_spec
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
def test_a_published_size_is_recognised_with_its_recipe(preset):
    shapes = jax.eval_shape(lambda: init_params(mar_preset(preset), jax.random.key(0)))
    state = mar_torch_layout.torch_state_from_params(
        jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s.shape), shapes))
    name, config = convert.mar_config_from_state(state)
    assert name == preset
    assert {k: config.model[k] for k in PRESETS[preset]} == PRESETS[preset]
    assert (config.data.image_size, config.data.num_classes, config.model.buffer_size) == (256, 1000, 64)
    assert config.train.num_epochs == 800.0


TINY_SIZES = dict(encoder_width=32, encoder_depth=2, encoder_heads=4, decoder_width=48, decoder_depth=2,
                  decoder_heads=2, mlp_ratio=4.0, num_classes=10, buffer_size=4, diffloss_width=24,
                  diffloss_depth=2, patch_size=2, latent_size=8, latent_channels=4)


def test_every_size_of_a_non_published_model_is_read_from_its_shapes():
    """The parity fixture's model: widths 32/48, heads 4/2, patch 2 over 4 channels, buffer 4."""
    state = mar_reference_state()
    assert mar_torch_layout.mar_sizes_from_state(state, latent_channels=4, heads=(4, 2)) == TINY_SIZES
    with pytest.raises(ConversionError, match="width 32 has no published head count.*give --heads"):
        convert.mar_config_from_state(state, latent_channels=4)
    with pytest.raises(ConversionError, match="token dim 16 is not --latent_channels=3 .*give --latent_channels"):
        convert.mar_config_from_state(state, latent_channels=3, heads=(4, 2))
    with pytest.raises(ConversionError, match="--heads='4,x'"):
        convert.parse_heads("4,x")
    assert convert.parse_heads("8") == (8, 8) and convert.parse_heads("4,2") == (4, 2)
    with pytest.raises(ConversionError, match="not a MAR state dict"):
        convert.mar_config_from_state({"encoder.conv_in.weight": np.zeros((1,))})


def test_a_non_published_model_converts_with_its_config_file_and_back(tmp_path):
    """file -> workdir + config.py -> the config the file's shapes give, params restored exactly ->
    the reference layout again, key for key."""
    state = mar_reference_state()
    ema = {k: v + 1.0 for k, v in state.items()}
    output = str(tmp_path / "converted")
    name, config = convert.convert_mar({"model": state, "model_ema": ema}, output, "both", None, 4, (4, 2))
    assert name == "custom"
    written = load_config_file(os.path.join(output, "config.py"))
    assert written.to_dict() == config.to_dict()
    assert {k: written.model[k] for k in TINY_SIZES if k in written.model} == {
        k: v for k, v in TINY_SIZES.items() if k in written.model}
    assert (written.data.image_size, written.data.num_classes, written.tokenizer.embed_dim) == (8 * 16, 10, 4)
    from marjax.checkpoints import RunCheckpoints

    checkpoints = RunCheckpoints(output, read_only=True)
    abstract = _abstract_state(written)
    checkpoints.check_compatible(0, abstract, written)
    restored = checkpoints.restore(0, abstract, None)
    checkpoints.close()
    np.testing.assert_array_equal(restored.ema_params["z_proj"]["kernel"], ema["z_proj.weight"].T)
    back = str(tmp_path / "back.pth")
    convert.export_torch("mar", output, back)
    exported = torch.load(back, weights_only=True)
    assert sorted(exported["model"]) == sorted(state)
    for key in state:
        np.testing.assert_array_equal(exported["model"][key].numpy(), state[key])


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


def test_a_kl_vae_of_another_latent_width_converts_with_a_config_that_reads_it(tmp_path):
    """KL-16's architecture with 8 latent channels: the width comes from the file, the written
    config's tokenizer section loads the directory, and the way back gives the same shapes."""
    target = abstract_tokenizer_params(convert.kl_model(8))
    state = kl_torch_layout.torch_state_from_params(convert.zeros_of_shapes(target))
    directory = str(tmp_path / "kl8")
    assert convert.convert_kl16({"model": state}, directory).embed_dim == 8
    config = load_config_file(os.path.join(directory, "config.py"))
    assert (config.tokenizer.kind, config.tokenizer.embed_dim, config.tokenizer.checkpoint) == ("kl", 8, directory)
    assert tokenizer_spec(config).channels == 8
    assert convert.kl_model_of_directory(directory).embed_dim == 8
    back = convert.tokenizer_torch_content("kl16", directory)["model"]
    assert sorted(back) == sorted(state) and back["post_quant_conv.weight"].shape == (8, 8, 1, 1)
    with pytest.raises(ConversionError, match="not a KL VAE state dict"):
        convert.convert_kl16({"model": {"encoder.conv_in.weight": np.zeros(1)}}, str(tmp_path / "bad"))


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
