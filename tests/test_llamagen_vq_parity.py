"""Parity with LlamaGen's VQ tokenizer (FoundationVision/LlamaGen @ce98ec4) on a tiny random-weight model.

`fixtures/llamagen_vq_tiny_reference.npz` holds numbers only, made by running the reference
`tokenizer/tokenizer_image/vq_model.py` outside this project (ch 32, ch_mult (1, 1, 2), 2 res blocks,
z_channels 16, codebook 64 x 8, 16x16 images): its state dict (weights moved off init onto int8
grids, packed into two flat arrays: `state_layout_json` says how), codes, latents, quantized
vectors, images decoded from codes, the training forward (reconstruction, vq and commitment
losses, gradients), the usage buffer after three training forwards, and the published VQ-16 and
VQ-8 keys and shapes. Its `config_json` documents every array. Arrays are NCHW there.
"""
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.tokenizers.code_usage import USAGE_WINDOW, code_statistics, init_usage_window, update_usage_window
from marjax.tokenizers.llamagen_vq import PRESETS, llamagen_vq
from marjax.tokenizers.llamagen_vq_torch_layout import (USAGE_BUFFER, params_from_torch_state, path_to_torch_key,
                                                        torch_key_to_path, torch_state_from_params)
from marjax.tokenizers.protocol import DiscreteTokenizer
from marjax.tokenizers.vq import VQTokenizer, init_vq_params

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "llamagen_vq_tiny_reference.npz"
MODEL = llamagen_vq(ch=32, ch_mult=(1, 1, 2), z_channels=16, codebook_size=64, code_dim=8)
RTOL = 1e-5  # relative to each array's largest magnitude
PUBLISHED = {"vq16": ("VQ-16", 71_883_403), "vq8": ("VQ-8", 70_109_835)}


def close(actual, expected, rtol=RTOL):
    expected = np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * float(np.abs(expected).max()))


def nhwc(x):
    return jnp.asarray(x).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def state(ref):
    """The reference's state dict (float32), unpacked; its all-zero usage buffer rebuilt."""
    grid, floats, state = iter(ref["state_grid"]), iter(ref["state_float"]), {}
    for key, shape, step in json.loads(str(ref["state_layout_json"])):
        values = np.fromiter(floats if step is None else grid, np.float32, math.prod(shape)).reshape(shape)
        state[key] = values if step is None else values * np.float32(step)  # a power of two: exact
    state[USAGE_BUFFER] = np.zeros((USAGE_WINDOW,), np.float32)
    return state


@pytest.fixture(scope="module")
def params(state):
    return params_from_torch_state(state, jax.eval_shape(lambda: init_vq_params(MODEL, jax.random.key(0))))


@pytest.fixture(scope="module")
def tokenizer(params):
    """One tokenizer, so that its compiled encode_codes serves every test."""
    return VQTokenizer(MODEL, params)


@jax.jit
def latents_and_encoding(params, images):
    """(quant_conv(encoder(images)), MODEL.encode(images))."""
    return MODEL.apply({"params": params}, images, method=lambda m, x: (m.quant_conv(m.encoder(x)), m.encode(x)))


def test_key_layout_both_ways(state, params):
    assert torch_key_to_path("decoder.conv_blocks.0.attn.2.v.bias", 5) == ("decoder", "up_4_attn_2", "v", "bias")
    assert torch_key_to_path("decoder.conv_blocks.3.upsample.conv.weight", 5) == ("decoder", "up_1_upsample",
                                                                                  "conv", "kernel")
    assert torch_key_to_path("encoder.conv_blocks.1.res.0.nin_shortcut.weight", 4) == (
        "encoder", "down_1_block_0", "nin_shortcut", "kernel")
    assert torch_key_to_path("encoder.mid.1.norm.weight", 5) == ("encoder", "mid_attn_1", "norm", "scale")
    assert path_to_torch_key(("decoder", "mid_block_2", "conv1", "bias"), 4) == "decoder.mid.2.conv1.bias"
    np.testing.assert_array_equal(params["decoder"]["up_2_attn_1"]["k"]["kernel"][0, 0],
                                  state["decoder.conv_blocks.0.attn.1.k.weight"][:, :, 0, 0].T)
    back = torch_state_from_params(params)
    assert sorted(back) == sorted(state)
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)

    broken = dict(state)
    del broken["quantize.embedding.weight"]
    broken["decoder.conv_blocks.3.res.0.conv1.weight"] = np.zeros((32, 32, 3, 3), np.float32)  # a 4th level
    broken["encoder.conv_in.weight"] = np.zeros((32, 1, 3, 3), np.float32)
    target = jax.eval_shape(lambda: init_vq_params(MODEL, jax.random.key(0)))
    with pytest.raises(ValueError, match=r"missing \['quantizer/codebook'\], unexpected \['decoder.conv_blocks.3.res"
                                         r".*encoder.conv_in.weight: \(3, 3, 1, 32\) vs \(3, 3, 3, 32\)"):
        params_from_torch_state(broken, target)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_published_checkpoint_layout_fits_the_preset(ref, preset):
    """Every key and shape of LlamaGen's VQ-16 / VQ-8 (from the reference module) maps onto the preset."""
    name, count = PUBLISHED[preset]
    shapes = json.loads(str(ref["published_shapes_json"]))[name]
    assert shapes[USAGE_BUFFER] == [USAGE_WINDOW]
    target = jax.eval_shape(lambda: init_vq_params(llamagen_vq(preset), jax.random.key(0)))
    assert sum(x.size for x in jax.tree.leaves(target)) == count
    params = params_from_torch_state({k: np.broadcast_to(np.float32(0), v) for k, v in shapes.items()}, target)
    assert {k: list(v.shape) for k, v in torch_state_from_params(params).items()} == shapes


def test_latents_codes_and_quantized_vectors(ref, params):
    latents, (quantized, codes, _) = latents_and_encoding(params, nhwc(ref["images"]))
    close(latents, nhwc(ref["latents"]))
    np.testing.assert_array_equal(codes, ref["codes"])
    close(quantized, nhwc(ref["quantized"]))


def test_serves_as_a_discrete_tokenizer(ref, tokenizer):
    assert isinstance(tokenizer, DiscreteTokenizer) and tokenizer.stride == 4 and tokenizer.codebook_size == 64
    codes = tokenizer.encode_codes(nhwc(ref["images"]))
    assert codes.dtype == jnp.int32
    np.testing.assert_array_equal(codes, ref["codes"])
    close(tokenizer.decode_codes(jnp.asarray(ref["codes"])), nhwc(ref["decoded_codes"]))


def test_training_forward_losses_and_gradients(ref, state, params):
    images, weights = nhwc(ref["images"]), nhwc(ref["train_rec_weights"])

    def loss(params, images):
        rec, _, stats = MODEL.apply({"params": params}, images)
        return stats["codebook_loss"] + stats["commitment_loss"] + jnp.mean(rec * weights), (rec, stats)

    (_, (rec, stats)), (g_params, g_images) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(params, images)
    close(rec, nhwc(ref["train_rec"]))
    close(stats["codebook_loss"], ref["train_vq_loss"])
    close(stats["commitment_loss"], ref["train_commit_loss"])
    close(g_images, nhwc(ref["grad_images"]))  # straight through the quantizer, back through the encoder
    g_state = torch_state_from_params(g_params)
    for key in [k[len("grad/"):] for k in ref if k.startswith("grad/")]:
        close(g_state[key], ref[f"grad/{key}"], rtol=2 * RTOL)  # measured <= 5.2e-6: sums over more terms


def test_usage_window_is_the_reference_buffer(ref, tokenizer):
    window = init_usage_window()
    batches = [ref["images"], *ref["usage_images"]]  # the reference's three training forwards
    for n, images in enumerate(batches):
        window = update_usage_window(window, tokenizer.encode_codes(nhwc(images)))
        np.testing.assert_allclose(code_statistics(window, 64)["codebook_usage"], ref["usages"][n], rtol=1e-7)
    tail = ref["usage_window_tail"]
    np.testing.assert_array_equal(window[-tail.size:], tail)
    assert not window[:-tail.size].any()
