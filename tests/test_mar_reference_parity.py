"""Parity with the reference PyTorch MAR (LTH14/mar fe470ac) on a tiny random-weight model.

`fixtures/mar_tiny_reference.npz` holds numbers only, produced by running the reference code
outside this project: its state dict (perturbed so no layer is trivially zero), fixed inputs,
the injected randomness (orders, mask, label drop, timesteps, noise, every sampling draw) and
the reference's outputs. Its `config_json` entry documents every array.
"""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.heads import diffusion
from marjax.models.masking import sampling_schedule
from marjax.models.common import patchify
from marjax.models.mar import MAR
from marjax.models.mar_torch_layout import params_from_torch_state, torch_key_to_path
from marjax.sampling.masked import generate

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "mar_tiny_reference.npz"
MODEL = MAR(latent_size=8, latent_channels=4, patch_size=2, encoder_width=32, encoder_depth=2, encoder_heads=4,
            decoder_width=48, decoder_depth=2, decoder_heads=2, num_classes=10, buffer_size=4,
            diffloss_depth=2, diffloss_width=24)
RTOL = ATOL = 1e-4


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def params(ref):
    state = {k[len("param/"):]: v for k, v in ref.items() if k.startswith("param/")}
    return params_from_torch_state(state, MODEL)


def apply(params, *args, **kwargs):
    return MODEL.apply({"params": params}, *args, **kwargs)


def nhwc(x):
    return jnp.asarray(x).transpose(0, 2, 3, 1)


def test_key_mapping_and_its_errors(ref, params):
    assert torch_key_to_path("diffloss.net.res_blocks.1.adaLN_modulation.1.weight") == (
        "diffloss", "res_blocks_1", "adaLN_modulation", "weight")
    state = {k[len("param/"):]: v for k, v in ref.items() if k.startswith("param/")}
    np.testing.assert_array_equal(params["encoder_blocks_1"]["attn"]["qkv"]["kernel"],
                                  state["encoder_blocks.1.attn.qkv.weight"].T)
    broken = dict(state)
    del broken["mask_token"]
    broken["extra.weight"] = np.zeros(3)
    broken["z_proj.bias"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"missing \['mask_token'\].*unexpected \['extra.weight'\].*z_proj.bias"):
        params_from_torch_state(broken, MODEL)


def test_patchify_and_class_embedding(ref, params):
    tokens = patchify(nhwc(ref["imgs"]), 2)
    np.testing.assert_array_equal(tokens, ref["tokens"])
    emb = apply(params, jnp.asarray(ref["labels"]), jnp.asarray(ref["drop_label"]), method=MAR.class_embedding)
    np.testing.assert_allclose(emb, ref["class_embedding"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("num_keep_max", [5, 9])
def test_encoder_and_decoder(ref, params, num_keep_max):
    """num_keep_max = 5 is exact (11 of 16 masked); 9 adds padded rows that must change nothing."""
    mask = jnp.asarray(ref["mask"] > 0)
    x = apply(params, jnp.asarray(ref["tokens"]), mask, jnp.asarray(ref["class_embedding"]), num_keep_max,
              method=MAR.encode)
    np.testing.assert_allclose(x[:, :9], ref["encoder_out"], rtol=RTOL, atol=ATOL)
    z = apply(params, x, mask, method=MAR.decode)
    np.testing.assert_allclose(z, ref["decoder_z"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("num_masked_max", [None, 11, 13])
def test_diffloss_mlp_and_training_loss(ref, params, num_masked_max):
    """num_masked_max = 11 runs the MLP on exactly the masked positions, 13 on two known ones too:
    the loss and the masked rows' terms are the reference's either way."""
    t, noise = jnp.asarray(ref["loss_t"], jnp.int32), jnp.asarray(ref["loss_noise"])
    out = apply(params, jnp.asarray(ref["loss_x_t"]), t, jnp.asarray(ref["loss_z"]), method=MAR.denoise)
    np.testing.assert_allclose(out, ref["loss_mlp_out"], rtol=RTOL, atol=ATOL)
    x_t = diffusion.q_sample(diffusion.make_diffusion(), jnp.asarray(ref["loss_target"]), t, noise)
    np.testing.assert_allclose(x_t, ref["loss_x_t"], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(diffusion.make_diffusion().betas, ref["train_betas"])

    loss, terms = apply(params, jnp.asarray(ref["tokens"]), jnp.asarray(ref["labels"]), jnp.asarray(ref["mask"] > 0),
                        jnp.asarray(ref["drop_label"]), t, noise, 5, num_masked_max)
    masked_rows = np.tile(ref["mask"].reshape(-1) > 0, t.shape[0] // ref["mask"].size)
    compared = slice(None) if num_masked_max is None else masked_rows
    for name in ("mse", "vb", "loss"):
        np.testing.assert_allclose(terms[name][compared], ref[f"loss_{name}"][compared], rtol=RTOL, atol=ATOL,
                                   err_msg=name)
    if num_masked_max == 11:
        np.testing.assert_array_equal(terms["loss"][~masked_rows], 0.0)
    np.testing.assert_allclose(loss, ref["loss_scalar"], rtol=RTOL)


def test_diffloss_mlp_on_more_rows_than_timesteps(ref, params):
    """Past 1,000 rows the MLP embeds each timestep once and gathers: still the reference's numbers."""
    n = ref["loss_t"].shape[0]
    copies = -(-(diffusion.NUM_TRAIN_TIMESTEPS + 1) // n)

    def tile(a):
        return jnp.tile(jnp.asarray(a), (copies,) + (1,) * (np.ndim(a) - 1))

    out = apply(params, tile(ref["loss_x_t"]), tile(ref["loss_t"]).astype(jnp.int32), tile(ref["loss_z"]),
                method=MAR.denoise)
    assert out.shape[0] > diffusion.NUM_TRAIN_TIMESTEPS
    np.testing.assert_allclose(out, tile(ref["loss_mlp_out"]), rtol=RTOL, atol=ATOL)


def test_diffloss_reverse_process(ref, params):
    d = diffusion.make_diffusion("10")
    np.testing.assert_array_equal(d.timestep_map, ref["dl_timestep_map"])
    np.testing.assert_allclose(d.betas, ref["dl_betas"], rtol=1e-12)
    z = jnp.asarray(ref["dl_z"])
    draws = [jnp.asarray(ref[f"dl_noise_{i}"]) for i in range(11)]
    out = diffusion.p_sample_loop(d, lambda x, t: apply(params, x, t, z, method=MAR.denoise), draws[0],
                                  lambda j: jnp.stack(draws[1:])[j], 1.0)
    np.testing.assert_allclose(out, ref["dl_out"], rtol=RTOL, atol=ATOL)


def reference_noise_in_slab_layout(ref, prefix, orders, num_iter=4, steps=10):
    """Rearranges the reference's noise draws (rows in mask_to_pred.nonzero() order, cond half first)
    into the sampler's layout (num_iter, steps + 1, B, slab, C), slot s of sample b = order[after + s]."""
    schedule = sampling_schedule(16, num_iter)
    b, slab = orders.shape[0], schedule.max_predicted
    noise = np.zeros((num_iter, steps + 1, b, slab, 16), np.float32)
    for k in range(num_iter):
        pred = ref[f"{prefix}mask_to_pred"][k]
        row_of = {(int(i), int(p)): r for r, (i, p) in enumerate(zip(*np.nonzero(pred)))}
        assert len(row_of) == schedule.num_predicted[k] * b
        for j in range(steps + 1):
            draw = ref[f"{prefix}noise_{k * (steps + 1) + j}"]
            for i in range(b):
                for s in range(schedule.num_predicted[k]):
                    noise[k, j, i, s] = draw[row_of[(i, int(orders[i, schedule.masked_after[k] + s]))]]
    return jnp.asarray(noise)


@pytest.mark.parametrize("prefix, cfg, temperature", [("gen_", 2.0, 0.9), ("gen_cfg1_", 1.0, 1.0)])
def test_whole_generation(ref, params, prefix, cfg, temperature):
    orders = ref[f"{prefix}orders"]
    schedule = sampling_schedule(16, 4)
    for k in range(4):  # the reference predicts the same positions at each step
        expected = np.zeros((3, 16), bool)
        for i in range(3):
            expected[i, orders[i, schedule.masked_after[k]:schedule.masked_before[k]]] = True
        np.testing.assert_array_equal(ref[f"{prefix}mask_to_pred"][k], expected)
    np.testing.assert_allclose(schedule.cfg_scales(cfg, "linear"), ref[f"{prefix}cfg_iter"], rtol=1e-6)
    noise = reference_noise_in_slab_layout(ref, prefix, orders)
    out = generate(MODEL, params, jnp.asarray(ref[f"{prefix}labels"]), jax.random.key(0), num_iter=4,
                   cfg=cfg, cfg_schedule="linear", temperature=temperature, num_diffusion_steps=10,
                   orders=jnp.asarray(orders, jnp.int32), noise=noise)
    expected = nhwc(ref[f"{prefix}tokens"])
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL * float(np.abs(expected).max()))


def test_diffloss_condition_rows_shared_by_consecutive_copies(ref, params):
    """z with one row per token conditions that token's k consecutive copies exactly as z repeated
    k times; a row count that does not divide is an error."""
    x, t = jnp.asarray(ref["loss_x_t"][:6]), jnp.asarray(ref["loss_t"][:6], jnp.int32)
    z = jnp.asarray(ref["loss_z"][:3])
    shared = apply(params, x, t, z, method=MAR.denoise)
    np.testing.assert_allclose(shared, apply(params, x, t, jnp.repeat(z, 2, axis=0), method=MAR.denoise),
                               rtol=1e-6, atol=1e-6)
    assert not np.allclose(shared, apply(params, x, t, jnp.tile(z, (2, 1)), method=MAR.denoise), atol=1e-4)
    with pytest.raises(ValueError, match="6 rows of x cannot share 4 condition rows"):
        apply(params, x, t, jnp.asarray(ref["loss_z"][:4]), method=MAR.denoise)
