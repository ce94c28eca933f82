"""Logical axis names on every param, the rules that map them to the mesh, and sharded training
on 8 fake CPU devices (a subprocess: the device count is fixed when JAX starts)."""
import json
import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from marjax.config.defaults import base_config
from marjax.errors import ConfigError
from marjax.tokenizers.kl import AutoencoderKL
from marjax.models.ar import AR
from marjax.models.ar import init_boxed_params as ar_init_boxed_params
from marjax.models.gpt import GPT
from marjax.models.gpt import init_boxed_params as gpt_init_boxed_params
from marjax.models.mar import MAR, init_boxed_params
from marjax.models.var import VAR
from marjax.models.var import init_boxed_params as var_init_boxed_params
from marjax.tokenizers.discriminator import PatchDiscriminator
from marjax.tokenizers.vq import VQModel
from marjax.parallel.sharding import MESH_AXES, logical_axes, make_mesh, mesh_from_config, mesh_spec
from marjax.tasks.registry import make_task
from marjax.tasks.autoencoder_step import init_boxed_tokenizer_variables
from tests.test_main_program import REPO, fake_devices

RULES = base_config().mesh.rules
MESH_2x4x2 = AbstractMesh((2, 4, 2), MESH_AXES)
MESH_1x8x1 = AbstractMesh((1, 8, 1), MESH_AXES)


@pytest.mark.parametrize("names, shape, mesh, expected", [
    (P("embed", "mlp"), (32, 128), MESH_1x8x1, P("fsdp", None)),      # FSDP on the first divisible rule
    (P("mlp", "embed"), (128, 32), MESH_1x8x1, P(None, "fsdp")),      # "embed" outranks "mlp"
    (P("embed", "mlp"), (32, 128), MESH_2x4x2, P("fsdp", "tensor")),  # "mlp" over "tensor" first
    (P("classes", "embed"), (10, 36), MESH_1x8x1, P(None, None)),     # 36 and 10: not divisible by 8
    (P("embed", "embed"), (36, 64), MESH_1x8x1, P(None, "fsdp")),     # one mesh axis used once
    (P("norm"), (1 << 12,), MESH_1x8x1, P(None)),                     # no rule for "norm"
    (P("embed", "mlp"), (8, 16), MESH_1x8x1, P()),                     # under min_size: replicated
])
def test_rules_map_logical_names_to_mesh_axes(names, shape, mesh, expected):
    assert mesh_spec(names, shape, mesh, RULES, min_size=256) == expected


@pytest.mark.parametrize("names, shape, expected", [
    (P("layers", "embed", "mlp"), (4, 32, 128), P(None, "fsdp", None)),  # FSDP as one layer's kernel
    (P("layers", "mlp", "embed"), (8, 128, 32), P(None, None, "fsdp")),  # never on the layer axis
    (P("layers", "embed", "mlp"), (16, 8, 16), P()),                      # one layer under min_size
])
def test_stacked_layers_stay_replicated_and_split_like_one_layer(names, shape, expected):
    assert mesh_spec(names, shape, MESH_1x8x1, RULES, min_size=256) == expected


def test_scanned_mar_params_are_split_like_the_unscanned_ones():
    """Every stacked param's spec is None on the layer axis, then the spec of one unstacked layer."""
    sizes = dict(latent_size=4, latent_channels=4, encoder_width=64, encoder_depth=2, encoder_heads=2,
                 decoder_width=64, decoder_depth=2, decoder_heads=2, num_classes=3, buffer_size=2,
                 diffloss_depth=1, diffloss_width=16)

    def specs(model):
        init = lambda: init_boxed_params(model, jax.random.key(0))  # noqa: E731
        shapes = flax.linen.unbox(jax.eval_shape(init))
        return jax.tree.map(lambda n, x: mesh_spec(n, x.shape, MESH_1x8x1, RULES, min_size=1024),
                            logical_axes(init), shapes, is_leaf=lambda n: isinstance(n, P))

    scanned, unscanned = specs(MAR(**sizes, scan_layers=True)), specs(MAR(**sizes))
    assert scanned["encoder_blocks"]["mlp"]["fc1"]["kernel"] == P(None, "fsdp", None)
    for group in ("encoder_blocks", "decoder_blocks"):
        one_layer = flax.traverse_util.flatten_dict(unscanned[f"{group}_1"])
        for path, spec in flax.traverse_util.flatten_dict(scanned[group]).items():
            assert spec == (P() if one_layer[path] == P() else P(None, *one_layer[path])), (group, path)


def _every_param_named(names, shapes):
    flat_names = flax.traverse_util.flatten_dict(names)
    flat_shapes = flax.traverse_util.flatten_dict(shapes)
    assert flat_names.keys() == flat_shapes.keys()
    unnamed = ["/".join(path) for path, x in flat_shapes.items() if len(flat_names[path]) != len(x.shape)]
    assert not unnamed, unnamed


MAR_TINY = dict(latent_size=4, latent_channels=4, encoder_width=16, encoder_depth=1, encoder_heads=2,
                decoder_width=16, decoder_depth=1, decoder_heads=2, num_classes=3, buffer_size=2, diffloss_depth=1,
                diffloss_width=16)
AR_TINY = dict(latent_size=4, latent_channels=4, width=16, depth=2, num_heads=2, num_classes=3, diffloss_depth=1,
               diffloss_width=16, vocab_size=32)


@pytest.mark.parametrize("model, init_boxed", [
    (MAR(**MAR_TINY), init_boxed_params),
    (MAR(**MAR_TINY, head="softmax", vocab_size=32, patch_size=1), init_boxed_params),
    (AR(**AR_TINY, order="random"), ar_init_boxed_params),
    (AR(**AR_TINY, head="softmax"), ar_init_boxed_params),
    (GPT(vocab_size=32, grid_size=4, num_classes=3, width=32, depth=2, num_heads=2, num_kv_heads=1),
     gpt_init_boxed_params),
    (VAR(vocab_size=32, code_dim=4, patch_nums=(1, 2), num_classes=3, width=16, depth=2, num_heads=2,
         shared_aln=True), var_init_boxed_params),
], ids=["mar", "mar_softmax", "ar_random", "ar_softmax", "gpt", "var"])
def test_every_generator_param_has_a_name_per_dimension(model, init_boxed):
    """So the mesh rules can shard every param of every family (FSDP, tensor parallelism)."""
    init = lambda: init_boxed(model, jax.random.key(0))  # noqa: E731
    _every_param_named(logical_axes(init), flax.linen.unbox(jax.eval_shape(init)))


@pytest.mark.parametrize("model", [
    AutoencoderKL(embed_dim=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16),
    VQModel(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), z_channels=32, codebook_size=64,
            code_dim=4, resolution=16),
], ids=["kl_vae", "vq"])
def test_every_tokenizer_and_discriminator_param_has_a_name_per_dimension(model):
    images = jnp.zeros((1, 16, 16, 3))
    init = lambda: init_boxed_tokenizer_variables(model, PatchDiscriminator(8, 2), images,  # noqa: E731
                                                  jax.random.key(0))
    (names, disc_names), (shapes, disc_vars) = logical_axes(init), flax.linen.unbox(jax.eval_shape(init))
    _every_param_named(names, shapes)
    _every_param_named(disc_names["params"], disc_vars["params"])


def test_mesh_sizes_and_rules_from_the_config():
    mesh_config = base_config().mesh
    assert dict(mesh_from_config(mesh_config).shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="only one of"):
        make_mesh(-1, -1, 1)
    mesh_config.fsdp = 2
    with pytest.raises(ConfigError, match="does not cover"):
        mesh_from_config(mesh_config)
    mesh_config.fsdp = 0
    with pytest.raises(ConfigError, match="mesh.fsdp=0"):
        mesh_from_config(mesh_config)
    mesh_config.fsdp = 1
    mesh_config.rules = (("embed", "model"),)
    with pytest.raises(ConfigError, match="mesh axis in"):
        mesh_from_config(mesh_config)
    mesh_config.rules = (("layers", "fsdp"),)
    with pytest.raises(ConfigError, match="stacked layer axis"):
        mesh_from_config(mesh_config)


def sharded_training(family: str) -> dict:
    """`tests.sharded_training` of `family` in a subprocess with 8 fake devices -> its JSON."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **fake_devices(8)}
    result = subprocess.run([sys.executable, "-m", "tests.sharded_training", family], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sharded_runs():
    return sharded_training("mar")


def check_losses_match(runs: dict) -> None:
    """8-device FSDP and 2x2x2 data/FSDP/tensor give the one-device losses to rtol 1e-5: the
    same math, only the reduction order of sharded sums differs (observed: < 1e-6)."""
    reference = runs["one_device"]["losses"]
    assert len(reference) == 3 and all(np.isfinite(reference))
    for name in ("fsdp8", "data2_fsdp2_tensor2"):
        assert runs[name]["num_devices"] == 8
        np.testing.assert_allclose(runs[name]["losses"], reference, rtol=1e-5, err_msg=name)


def test_sharded_training_matches_one_device(sharded_runs):
    check_losses_match(sharded_runs)


@pytest.mark.slow  # about a minute per family; CI runs MAR's above, `pytest -m slow tests/test_sharding.py` these
@pytest.mark.parametrize("family", ["ar", "gpt", "var"])
def test_every_family_trains_sharded_as_on_one_device(family):
    """The other families' tiny steps on the same meshes: equal losses, and their largest param
    (with its EMA and Adam moment) split over "fsdp" on the FSDP mesh."""
    runs = sharded_training(family)
    check_losses_match(runs)
    (watched,) = runs["fsdp8"]["watched"].values()
    for array in ("param", "ema", "adam_mu"):
        assert "fsdp" in watched[array]["spec"], (array, watched[array])
        assert np.prod(watched[array]["shard_shape"]) * 8 == np.prod(watched[array]["shape"]), watched[array]


@pytest.mark.parametrize("run, param, spec, shard_shape", [
    ("fsdp8", "decoder_blocks_0/mlp/fc1/kernel", ["fsdp", None], [4, 128]),
    ("fsdp8", "decoder_pos_embed_learned", [None, None, "fsdp"], [1, 20, 4]),
    ("fsdp8", "decoder_blocks_0/norm1/scale", [], [32]),                  # under fsdp_min_size
    ("data2_fsdp2_tensor2", "decoder_blocks_0/mlp/fc1/kernel", ["fsdp", "tensor"], [16, 64]),
    ("one_device", "decoder_blocks_0/mlp/fc1/kernel", [None, None], [32, 128]),
])
def test_params_ema_and_adam_moments_are_sharded_alike(sharded_runs, run, param, spec, shard_shape):
    watched = sharded_runs[run]["watched"][param]
    for array in ("param", "ema", "adam_mu"):
        assert watched[array]["spec"] == spec, (array, watched[array])
        assert watched[array]["shard_shape"] == shard_shape, (array, watched[array])


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_tokenizer_state_shardings_follow_the_params(kind):
    """The tokenizer task's layout on a 1 x 2 x 1 mesh: EMA and Adam moments as their params, the
    discriminator's big kernels split over "fsdp", its BatchNorm statistics replicated."""
    from configs import digits_vae
    config = digits_vae.get_config(kind if kind == "vq" else None)
    config.mesh.fsdp_min_size = 4096
    source = [{"image": np.zeros((16, 16, 1), np.uint8), "label": 0}]
    task = make_task(config, AbstractMesh((1, 2, 1), MESH_AXES), 64, source)
    s = task.shardings
    assert jax.tree.structure(s) == jax.tree.structure(task.abstract_state)
    assert s.ema_params == s.params["model"]
    assert s.opt_state[0].mu == s.params and s.disc_opt_state[0].nu == s.disc_params
    assert s.params["model"]["decoder"]["up_1_block_0"]["conv1"]["kernel"].spec == P(None, None, None, "fsdp")
    assert s.disc_params["conv_2"]["kernel"].spec == P(None, None, None, "fsdp")
    assert all(x.spec == P() for x in jax.tree.leaves(s.disc_stats))
