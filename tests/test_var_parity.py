"""Parity with the reference VAR transformer (FoundationVision/VAR @78b9539) on a tiny random-weight model.

`fixtures/var_tiny_reference.npz` holds numbers only, produced by running the reference code outside
this project: the state dict of a depth-2, width-64, 4-head VAR on V 64, Cvae 8, patch_nums (1, 2, 3, 4)
and 10 classes, every weight moved off VAR's init onto an int8 grid (`state/<key>` * `step/<key>`
exactly; the 1e-5 gammas, the 0.02 head and one learned q scale above the ln 100 clamp included), the
params its shared-AdaLN variant has instead, its quantizer's params, fixed labels and codes, the
teacher-forcing input, and the reference's eval-mode logits: the training forward (main, shared AdaLN,
no q/k norm) and `autoregressive_infer_cfg`'s per-scale logits with its KV cache, fed the fixed codes
(rows: the labels, then the null class). Its `config_json` documents every array.
"""
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.models.var import VAR, init_caches, init_params
from marjax.models.var_torch_layout import buffers, params_from_torch_state, torch_state_from_params
from marjax.tokenizers.msvq import MultiScaleQuantizer
from marjax.tokenizers.msvq_torch_layout import params_from_torch_state as quantizer_from_torch_state
from tests.packed_fixtures import int8_grid_state, load_npz

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "var_tiny_reference.npz"
PATCH_NUMS = (1, 2, 3, 4)
TINY = dict(vocab_size=64, code_dim=8, patch_nums=PATCH_NUMS, num_classes=10, width=64, depth=2, num_heads=4)
VARIANTS = {"main": {}, "saln": dict(shared_aln=True), "noanorm": dict(attn_l2_norm=False)}
RTOL = 1e-5  # relative to each array's largest magnitude


def close(actual, expected, rtol=RTOL):
    expected = np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * float(np.abs(expected).max()))


@pytest.fixture(scope="module")
def ref():
    return load_npz(FIXTURE)



def variant_state(ref, tag):
    """The state dict of a variant: main's params, less those it lacks, plus its own."""
    state = int8_grid_state(ref)
    if tag == "saln":
        state = {k: v for k, v in state.items() if ".ada_lin." not in k or k.startswith("head_nm.")}
    if tag == "noanorm":
        state = {k: v for k, v in state.items() if not k.endswith("scale_mul_1H11")}
    return {**state, **int8_grid_state(ref, f"{tag}/")}


@pytest.fixture(scope="module")
def variants(ref):
    """{tag: (model, params)}."""
    out = {}
    for tag, fields in VARIANTS.items():
        model = VAR(**TINY, **fields)
        out[tag] = model, params_from_torch_state(variant_state(ref, tag), model)
    return out


@pytest.mark.parametrize("tag", sorted(VARIANTS))
def test_training_logits(ref, variants, tag):
    model, params = variants[tag]
    logits = jax.jit(model.apply)({"params": params}, jnp.asarray(ref["labels"]), jnp.asarray(ref["teacher_input"]))
    close(logits, ref[f"{tag}/train_logits"])


@jax.jit(static_argnums=0)
def cached_logits(model, params, labels, inputs_per_scale):
    """prefill, then decode scale by scale, in one compiled program: (B, L, V)."""
    logits, caches = model.apply({"params": params}, labels, init_caches(model, labels.shape[0]), method=VAR.prefill)
    steps = [logits]
    for scale, inputs in enumerate(inputs_per_scale, start=1):
        logits, caches = model.apply({"params": params}, labels, inputs, scale, caches, method=VAR.decode)
        steps.append(logits)
    return jnp.concatenate(steps, axis=1)


def split_scales(model, sequence):
    """(B, L - p_1^2, ...) -> the pieces of scales 2..K."""
    bounds = [model.scale_bounds(k) for k in range(1, len(model.patch_nums))]
    return [sequence[:, begin - model.first_len:end - model.first_len] for begin, end in bounds]


@pytest.mark.parametrize("tag", ["main", "saln"])
def test_cached_logits_per_scale(ref, variants, tag):
    model, params = variants[tag]
    labels = jnp.asarray(ref["labels"])
    rows = jnp.concatenate([labels, jnp.full_like(labels, model.num_classes)])  # conditional, then null
    inputs = jnp.tile(jnp.asarray(ref["teacher_input"]), (2, 1, 1))
    close(cached_logits(model, params, rows, split_scales(model, inputs)), ref[f"{tag}/cached_logits"])


def test_cached_logits_from_codes_through_our_quantizer(ref, variants):
    """Codes -> `MultiScaleQuantizer.next_scale_input` -> decode: the reference's sampling path."""
    model, params = variants["main"]
    quantizer = MultiScaleQuantizer(64, 8, PATCH_NUMS)
    codes = [jnp.asarray(ref[f"codes_{k}"]).reshape(-1, p, p) for k, p in enumerate(PATCH_NUMS)]
    shapes = jax.eval_shape(lambda: quantizer.init(jax.random.key(0), codes, method="latents_from_codes"))
    quantizer_params = quantizer_from_torch_state({f"quantize.{k}": v for k, v in int8_grid_state(ref, "quant/").items()},
                                                  {"quantizer": nn.unbox(shapes["params"])})["quantizer"]

    def next_inputs(codes):
        f_hat, inputs = jnp.zeros((codes[0].shape[0], 4, 4, 8)), []
        for k in range(len(PATCH_NUMS) - 1):
            h = quantizer.apply({"params": quantizer_params}, codes[k], method="embed")
            f_hat, following = quantizer.apply({"params": quantizer_params}, f_hat, h, k, method="next_scale_input")
            inputs.append(following)
        return inputs

    inputs = jax.jit(next_inputs)(codes)
    close(jnp.concatenate(inputs, axis=1), ref["teacher_input"])
    labels = jnp.asarray(ref["labels"])
    rows = jnp.concatenate([labels, jnp.full_like(labels, model.num_classes)])
    close(cached_logits(model, params, rows, [jnp.tile(x, (2, 1, 1)) for x in inputs]), ref["main/cached_logits"])


def test_dropped_labels_are_the_null_class(ref, variants):
    model, params = variants["main"]
    dropped = jax.jit(model.apply)({"params": params}, jnp.asarray(ref["labels"]), jnp.asarray(ref["teacher_input"]),
                                   jnp.array([True, True]))
    close(dropped, ref["main/cached_logits"][2:])


@pytest.mark.parametrize("tag", ["main", "saln"])
def test_state_dict_round_trip(ref, tag):
    model = VAR(**TINY, **VARIANTS[tag])
    state = variant_state(ref, tag)
    back = torch_state_from_params(params_from_torch_state(state, model), model)
    assert sorted(back) == sorted({**state, **buffers(model)})
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_init_matches_the_references_statistics(ref):
    """The std of every param at init against the reference's init_weights (its ada_lin weights split
    into the gamma rows and the rest), within sampling noise."""
    model = VAR(**TINY)
    state = torch_state_from_params(jax.jit(lambda key: init_params(model, key))(jax.random.key(0)), model)
    stats = json.loads(str(ref["config_json"]))["init_stats"]
    width = model.width
    for key, (std, _) in stats.items():
        name, _, rows = key.partition("[")
        value = state[name]
        if rows:
            value = value[:2 * width] if rows.startswith(":") else value[2 * width:]
        noise = 5.0 / np.sqrt(2 * value.size)  # the relative spread of a sample std, 5 sigma
        assert abs(float(value.std()) - std) <= noise * std + 1e-7, (key, float(value.std()), std)
    np.testing.assert_allclose(state["blocks.1.attn.scale_mul_1H11"], np.log(4.0), rtol=1e-7)
