"""Parity with VAR's multi-scale VQVAE (FoundationVision/VAR @78b9539) on a tiny random-weight model.

`fixtures/var_msvq_tiny_reference.npz` holds numbers only, made by running the reference code
outside this project (ch 32, ch_mult (1, 1), 1 res block, Cvae 8, V 64, patch_nums (1, 2, 3, 4, 6, 8),
16x16 images, 4 shared Phis): its state dict (weights moved off init onto an int8 grid: each is
`state/<key>` * `step/<key>` exactly), the reference's codes, f_hat per scale, teacher-forcing
input, sampling steps, decoded images, training forward (loss, usage records, gradients) and its
scale-to-Phi rule for many sizes, and the published checkpoint's keys and shapes. Its `config_json`
documents every array. Arrays are NCHW there.
"""
import json
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.tokenizers.msvq import MultiScaleQuantizer, phi_table, update_hit_ema, usage_percent
from marjax.tokenizers.msvq_torch_layout import params_from_torch_state, torch_key_to_path, torch_state_from_params
from marjax.tokenizers.msvq_vae import VQVAE, init_vqvae_params
from tests.packed_fixtures import int8_grid_state, load_npz

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "var_msvq_tiny_reference.npz"
PATCH_NUMS = (1, 2, 3, 4, 6, 8)
MODEL = VQVAE(ch=32, ch_mult=(1, 1), num_res_blocks=1, code_dim=8, codebook_size=64, patch_nums=PATCH_NUMS)
QUANTIZER = MultiScaleQuantizer(64, 8, PATCH_NUMS)  # MODEL's, applied to params["quantizer"]
RTOL = 1e-5  # relative to each array's largest magnitude


def close(actual, expected, rtol=RTOL):
    expected = np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * float(np.abs(expected).max()))


def nhwc(x):
    return jnp.asarray(x).transpose(0, 2, 3, 1)


def as_grid(codes, p):
    return jnp.asarray(codes, jnp.int32).reshape(-1, p, p)


@pytest.fixture(scope="module")
def ref():
    return load_npz(FIXTURE)



@pytest.fixture(scope="module")
def params(ref):
    shapes = jax.eval_shape(lambda: init_vqvae_params(MODEL, jax.random.key(0)))
    return params_from_torch_state(int8_grid_state(ref), shapes)


def apply(params, *args, method=None):
    """MODEL.method(*args), compiled (much faster than op by op)."""
    return jax.jit(lambda p, *a: MODEL.apply({"params": p}, *a, method=method))(params, *args)


def ref_codes(ref, prefix=""):
    return [as_grid(ref[f"{prefix}codes_{k}"], p) for k, p in enumerate(PATCH_NUMS)]


def test_state_dict_maps_both_ways(ref, params):
    assert torch_key_to_path("quantize.quant_resi.qresi_ls.3.weight") == ("quantizer", "phi_3", "kernel")
    assert torch_key_to_path("quantize.quant_resi.5.bias") == ("quantizer", "phi_5", "bias")
    assert torch_key_to_path("quantize.quant_resi.qresi.weight") == ("quantizer", "phi_0", "kernel")
    state = int8_grid_state(ref)
    qkv = state["decoder.up.1.attn.0.qkv.weight"]  # q, k, v stacked along the output channels
    np.testing.assert_array_equal(params["decoder"]["up_1_attn_0"]["k"]["kernel"][0, 0], qkv[32:64, :, 0, 0].T)
    back = torch_state_from_params(params, len(PATCH_NUMS))
    assert sorted(back) == sorted(state)
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    broken = dict(state)
    del broken["quantize.embedding.weight"]
    broken["quantize.quant_resi.qresi_ls.4.weight"] = np.zeros((8, 8, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"missing \['quantizer/codebook'\].*unexpected \['quantize.quant_resi"):
        params_from_torch_state(broken, jax.eval_shape(lambda: init_vqvae_params(MODEL, jax.random.key(0))))


def test_published_checkpoint_layout_fits_the_default_model(ref):
    """Every key and shape of vae_ch160v4096z32.pth (from the reference module) maps onto VQVAE()."""
    shapes = json.loads(str(ref["published_shapes_json"]))
    state = {k: np.broadcast_to(np.float32(0), v) for k, v in shapes.items()}  # no memory
    target = jax.eval_shape(lambda: init_vqvae_params(VQVAE(), jax.random.key(0)))
    params = params_from_torch_state(state, target)
    assert sum(x.size for x in jax.tree.leaves(params)) == 108_948_355
    assert {k: list(v.shape) for k, v in torch_state_from_params(params, 10).items()} == shapes


def test_phi_table_is_the_reference_rule(ref):
    for key, table in json.loads(str(ref["phi_tables_json"])).items():
        num_scales, num_phis = map(int, key.split(","))
        assert phi_table(num_scales, num_phis) == tuple(table), key
    assert phi_table(10, 4) == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)


def test_latents_codes_and_fhat_per_scale(ref, params):
    images = nhwc(ref["images"])
    close(apply(params, images, method=VQVAE.latents), nhwc(ref["latents"]))
    codes = apply(params, images, method=VQVAE.codes)
    for k, (ours, theirs) in enumerate(zip(codes, ref_codes(ref))):
        np.testing.assert_array_equal(ours, theirs, err_msg=f"scale {k}")
    quantizer = QUANTIZER.bind({"params": params["quantizer"]})
    for k in range(len(PATCH_NUMS)):  # f_hat after scale k: the codes of scales 1..k
        close(quantizer.latents_from_codes(codes[:k + 1]), nhwc(ref[f"fhat_{k}"]))


def test_teacher_forcing_input(ref, params):
    inputs = QUANTIZER.apply({"params": params["quantizer"]}, ref_codes(ref),
                             method=MultiScaleQuantizer.teacher_forcing_input)
    assert inputs.shape == (2, sum(p * p for p in PATCH_NUMS) - 1, 8)
    close(inputs, ref["teacher_input"])


def test_sampling_steps_and_decoding(ref, params):
    quantizer = QUANTIZER.bind({"params": params["quantizer"]})
    f_hat = jnp.zeros((2, 8, 8, 8))
    for k, p in enumerate(PATCH_NUMS):
        h = quantizer.embed(as_grid(ref[f"sample_codes_{k}"], p))
        f_hat, following = quantizer.next_scale_input(f_hat, h, k)
        if k < len(PATCH_NUMS) - 1:
            expected = ref[f"sample_next_{k}"]  # (B, C, p', p') -> (B, p'^2, C), row-major
            close(following, expected.reshape(2, 8, -1).transpose(0, 2, 1))
        else:
            assert following is None
    close(f_hat, nhwc(ref["sample_fhat"]))
    decoded = apply(params, f_hat, method=VQVAE.decode)
    close(decoded, nhwc(ref["sample_decoded"]))
    assert float(jnp.abs(nhwc(ref["sample_decoded_unclamped"])).max()) > 1.0  # the clamp is exercised
    close(apply(params, ref_codes(ref), method=VQVAE.decode_codes), nhwc(ref["decoded_codes"]))


@pytest.mark.parametrize("label, num_phis", [("nonshared", 6), ("shared", 1)])
def test_other_phi_sharings(ref, params, label, num_phis):
    state = int8_grid_state(ref, f"{label}/")
    phis = flax.traverse_util.unflatten_dict({torch_key_to_path("quantize." + k)[1:]: (
        v.transpose(2, 3, 1, 0) if v.ndim == 4 else v) for k, v in state.items()})
    quantizer = MultiScaleQuantizer(64, 8, PATCH_NUMS, num_phis).bind(
        {"params": {"codebook": params["quantizer"]["codebook"], **phis}})
    codes = quantizer.codes(nhwc(ref["latents"]))
    for ours, theirs in zip(codes, ref_codes(ref, f"{label}/")):
        np.testing.assert_array_equal(ours, theirs)
    close(quantizer.teacher_forcing_input(codes), ref[f"{label}/teacher_input"])


def test_training_forward_loss_usage_and_gradients(ref, params):
    images, weights = nhwc(ref["images"]), nhwc(ref["train_rec_weights"])

    def loss(params, images):
        rec, _, stats = MODEL.apply({"params": params}, images)
        return stats["vq_loss"] + jnp.mean(rec * weights), (rec, stats)

    (_, (rec, stats)), (g_params, g_images) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(params, images)
    close(rec, nhwc(ref["train_rec"]))
    close(stats["vq_loss"], ref["train_vq_loss"])
    close(g_images, nhwc(ref["grad_images"]))  # back through the whole encoder

    g_state = torch_state_from_params(g_params, len(PATCH_NUMS))
    for key in [k[len("grad/"):] for k in ref if k.startswith("grad/")]:
        close(g_state[key], ref[f"grad/{key}"])

    ema = jnp.zeros((len(PATCH_NUMS), 64))
    for n in range(1, 19):  # the reference ran 18 forwards on the same images
        ema = update_hit_ema(ema, stats["hits"], n - 1)
        if f"train_hit_ema_{n}" in ref:
            close(ema, ref[f"train_hit_ema_{n}"])
    np.testing.assert_allclose(usage_percent(ema, 2 * 8 * 8), ref["train_usages_18"], rtol=1e-6)
