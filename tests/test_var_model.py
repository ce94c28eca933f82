"""VAR's transformer: published parameter counts, cached inference against the block-causal forward, what
a token of scale k may influence, label drop, drop path, logical axis names and the state-dict errors."""
import dataclasses

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.models.var import (PATCH_NUMS_256, PATCH_NUMS_512, PRESETS, VAR, count_params, init_boxed_params,
                               init_caches, init_params, var_preset)
from marjax.models.var_torch_layout import params_from_torch_state, torch_state_from_params
from marjax.parallel.sharding import logical_axes
from marjax.tokenizers.msvq import MultiScaleQuantizer

PATCH_NUMS = (1, 2, 3, 4)
TINY = dict(vocab_size=64, code_dim=8, patch_nums=PATCH_NUMS, num_classes=10, width=64, depth=2, num_heads=4)

# VAR's README sizes (VAR.md: the parameter counts its code gives, which the README rounds).
QUOTED = {"d16": (310.3e6, 0.05e6), "d20": (600.9e6, 0.05e6), "d24": (1033e6, 0.5e6), "d30": (2010e6, 0.5e6),
          "d36-s": (2354e6, 0.5e6)}


def reference_count(depth: int, shared_aln: bool, patch_nums: tuple[int, ...], vocab: int = 4096,
                    code_dim: int = 32, classes: int = 1000) -> int:
    """VAR's parameters from its definition: per block qkv (no bias) + q, v biases + per-head scale +
    proj + FFN + the 6-way AdaLN (a Linear, or ada_gss plus one shared Linear)."""
    width, heads = 64 * depth, depth
    block = 3 * width * width + 2 * width + heads + width * width + width + 8 * width * width + 5 * width
    adaln = 6 * width * (width + 1)
    blocks = depth * (block + (6 * width if shared_aln else adaln)) + (adaln if shared_aln else 0)
    tables = (code_dim + 1) * width + (classes + 1) * width + width + sum(p * p for p in patch_nums) * width \
        + len(patch_nums) * width
    return blocks + tables + 2 * width * (width + 1) + (width + 1) * vocab


@pytest.mark.parametrize("name", sorted(QUOTED))
def test_preset_parameter_counts(name):
    depth = int(name[1:3])
    shared = name.endswith("-s")
    assert PRESETS[name]["width"] == 64 * depth and PRESETS[name]["num_heads"] == depth
    assert PRESETS[name]["drop_path_rate"] == pytest.approx(0.1 * depth / 24)
    patch_nums = PATCH_NUMS_512 if shared else PATCH_NUMS_256
    model = var_preset(name)
    assert (model.shared_aln, model.patch_nums) == (shared, patch_nums)
    count = count_params(model)
    assert count == reference_count(depth, shared, patch_nums)
    quoted, rounding = QUOTED[name]
    assert abs(count - quoted) <= rounding, count


def test_unknown_preset_or_field():
    with pytest.raises(ValueError, match="unknown VAR preset"):
        var_preset("d12")
    with pytest.raises(ValueError, match=r"unknown VAR fields \['heads'\]"):
        var_preset("d16", heads=3)


def random_params(shapes, seed=0):
    """A param tree of `shapes` (from `jax.eval_shape`) drawn 0.2 normal by NumPy: no RNG program to compile,
    and VAR's 1e-5 gammas and 0.02 head would hide bugs."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(0.2 * rng.standard_normal(x.shape), jnp.float32), nn.unbox(shapes))


@pytest.fixture(scope="module")
def tiny():
    model = VAR(**TINY)
    return model, random_params(jax.eval_shape(lambda: init_params(model, jax.random.key(0))))


@jax.jit(static_argnums=0)
def forward(model, params, labels, inputs, drop_label=None):
    return model.apply({"params": params}, labels, inputs, drop_label)


@jax.jit(static_argnums=0)
def cached(model, params, labels, inputs):
    """prefill and one decode per scale, the inputs of each scale cut from the teacher-forcing input."""
    logits, caches = model.apply({"params": params}, labels, init_caches(model, labels.shape[0]), method=VAR.prefill)
    steps = [logits]
    for scale in range(1, len(model.patch_nums)):
        begin, end = model.scale_bounds(scale)
        piece = inputs[:, begin - model.first_len:end - model.first_len]
        logits, caches = model.apply({"params": params}, labels, piece, scale, caches, method=VAR.decode)
        steps.append(logits)
    return jnp.concatenate(steps, axis=1), caches


def teacher_input(model, seed=3, batch=3):
    return jax.random.normal(jax.random.key(seed), (batch, model.seq_len - model.first_len, model.code_dim))


def test_cached_scales_equal_the_block_causal_forward(tiny):
    model, params = tiny
    labels, inputs = jnp.array([1, 10, 7]), teacher_input(model)  # 10: the null class
    full = forward(model, params, labels, inputs)
    assert full.shape == (3, 30, 64) and full.dtype == jnp.float32
    logits, caches = cached(model, params, labels, inputs)
    np.testing.assert_allclose(logits, full, rtol=1e-5, atol=1e-5)
    assert len(caches) == 2 and int(caches[0].length) == 30 and caches[0].keys().shape == (3, 30, 4, 16)


def test_an_input_token_of_scale_k_reaches_scales_k_and_later_only(tiny):
    """The block-causal mask: one token changed in scale k's input changes all of scale k (bidirectional
    within a scale) and the later scales, and leaves the earlier ones bit-identical."""
    model, params = tiny
    labels, inputs = jnp.array([1, 2, 3]), teacher_input(model)
    full = forward(model, params, labels, inputs)
    for scale in range(1, len(PATCH_NUMS)):
        begin, end = model.scale_bounds(scale)
        changed = forward(model, params, labels, inputs.at[:, end - 1 - model.first_len].add(1.0))
        np.testing.assert_array_equal(changed[:, :begin], full[:, :begin])
        assert float(jnp.abs(changed[:, begin:] - full[:, begin:]).min(axis=-1).min()) > 0, scale


def test_a_code_of_scale_k_reaches_later_scales_only(tiny):
    """Through the quantizer's teacher-forcing input a code of scale k changes the logits of scales > k only."""
    model, params = tiny
    quantizer = MultiScaleQuantizer(64, 8, PATCH_NUMS)
    codes = [jax.random.randint(jax.random.key(k), (3, p, p), 0, 64) for k, p in enumerate(PATCH_NUMS)]
    q_params = random_params(jax.eval_shape(lambda: quantizer.init(jax.random.key(0), codes,
                                                                   method="teacher_forcing_input")))
    inputs = jax.jit(lambda codes: quantizer.apply(q_params, codes, method="teacher_forcing_input"))
    labels = jnp.array([4, 5, 6])
    full = forward(model, params, labels, inputs(codes))
    for scale in range(len(PATCH_NUMS) - 1):
        end = model.scale_bounds(scale)[1]
        moved = list(codes)
        moved[scale] = (codes[scale] + 1) % 64
        changed = forward(model, params, labels, inputs(moved))
        np.testing.assert_array_equal(changed[:, :end], full[:, :end])
        assert float(jnp.abs(changed[:, end:] - full[:, end:]).max(axis=-1).min()) > 0, scale


def test_label_drop_injected_or_drawn(tiny):
    model, params = tiny
    labels, inputs = jnp.array([1, 2, 3]), teacher_input(model)
    null = forward(model, params, jnp.array([1, 10, 3]), inputs)
    np.testing.assert_array_equal(forward(model, params, labels, inputs, jnp.array([False, True, False])), null)
    always = VAR(**TINY, class_dropout=1.0, drop_path_rate=0.0)
    drawn = jax.jit(lambda: always.apply({"params": params}, labels, inputs, deterministic=False,
                                         rngs={"dropout": jax.random.key(0)}))()
    np.testing.assert_allclose(drawn, forward(model, params, jnp.full((3,), 10), inputs), rtol=1e-5, atol=1e-5)


def test_drop_path_uses_the_dropout_rng(tiny):
    model, params = VAR(**TINY, drop_path_rate=0.5, class_dropout=0.0), tiny[1]
    labels, inputs = jnp.arange(8), teacher_input(model, batch=8)

    @jax.jit
    def train(rng):
        return model.apply({"params": params}, labels, inputs, deterministic=False, rngs={"dropout": rng})

    np.testing.assert_array_equal(train(jax.random.key(0)), train(jax.random.key(0)))
    assert not np.allclose(train(jax.random.key(0)), train(jax.random.key(1)))


def test_bfloat16_compute_stays_close(tiny):
    model, params = tiny
    labels, inputs = jnp.array([1, 2, 3]), teacher_input(model)
    low = forward(dataclasses.replace(model, dtype=jnp.bfloat16), params, labels, inputs)
    full = forward(model, params, labels, inputs)
    assert low.dtype == jnp.float32
    assert float(jnp.abs(low - full).max()) <= 0.05 * float(jnp.abs(full).max())


def test_logical_axis_names():
    specs = logical_axes(lambda: init_boxed_params(VAR(**TINY, shared_aln=True), jax.random.key(0)))
    names = {"/".join(p): tuple(v) for p, v in flax.traverse_util.flatten_dict(specs).items()}
    assert names["class_emb/embedding"] == ("classes", "embed")
    assert names["word_embed/kernel"] == ("code_dim", "embed")
    assert names["pos_1LC"] == (None, "seq", "embed")
    assert names["blocks_0/attn/qkv/kernel"] == ("embed", "qkv")
    assert names["blocks_0/attn/q_bias"] == ("qkv",)
    assert names["blocks_0/attn/proj/kernel"] == ("heads", "embed")
    assert names["blocks_1/ffn/fc2/kernel"] == ("mlp", "embed")
    assert names["blocks_1/ada_gss"] == (None, "embed")
    assert names["shared_ada_lin/kernel"] == ("embed", "adaln")
    assert names["head/output/kernel"] == ("embed", "codes")


def test_init_follows_vars_rules():
    """init_weights: trunc_normal(sqrt(1/3C)) everywhere, proj and fc2 / sqrt(2 depth), the head x init_head,
    head_nm x init_adaln, the AdaLN gammas x init_adaln_gamma and the scales and shifts x init_adaln; biases 0,
    the q scale ln 4."""
    model = VAR(**TINY)
    flat = flax.traverse_util.flatten_dict(jax.jit(lambda key: init_params(model, key))(jax.random.key(0)))
    std = (1 / 192) ** 0.5

    def assert_std(path, expected, rows=slice(None)):
        assert abs(float(jnp.std(flat[path][..., rows])) / expected - 1) < 0.1, path

    assert_std(("blocks_1", "attn", "qkv", "kernel"), std)
    assert_std(("blocks_1", "attn", "proj", "kernel"), std / 2)
    assert_std(("blocks_1", "ffn", "fc2", "kernel"), std / 2)
    assert_std(("blocks_1", "ada_lin", "kernel"), std * 1e-5, slice(0, 128))
    assert_std(("blocks_1", "ada_lin", "kernel"), std * 0.5, slice(128, None))
    assert_std(("head", "output", "kernel"), std * 0.02)
    assert_std(("head_nm", "ada_lin", "kernel"), std * 0.5)
    assert_std(("class_emb", "embedding"), std)
    assert_std(("pos_1LC",), std)
    for path, value in flat.items():
        if path[-1] in ("bias", "q_bias", "v_bias"):
            np.testing.assert_array_equal(value, 0.0)
    np.testing.assert_allclose(flat[("blocks_0", "attn", "scale_mul")], np.log(4.0), rtol=1e-7)


def test_state_dict_keys_and_errors(tiny):
    model, params = tiny
    state = torch_state_from_params(params, model)
    block = ["attn.mat_qkv.weight", "attn.q_bias", "attn.v_bias", "attn.zero_k_bias", "attn.scale_mul_1H11",
             "attn.proj.weight", "attn.proj.bias", "ffn.fc1.weight", "ffn.fc1.bias", "ffn.fc2.weight", "ffn.fc2.bias",
             "ada_lin.1.weight", "ada_lin.1.bias"]
    top = ["word_embed.weight", "word_embed.bias", "class_emb.weight", "pos_start", "pos_1LC", "lvl_embed.weight",
           "lvl_1L", "attn_bias_for_masking", "head_nm.ada_lin.1.weight", "head_nm.ada_lin.1.bias", "head.weight",
           "head.bias"]
    assert sorted(state) == sorted(top + [f"blocks.{i}.{key}" for i in range(2) for key in block])
    assert state["blocks.1.attn.mat_qkv.weight"].shape == (192, 64)
    assert state["blocks.1.attn.scale_mul_1H11"].shape == (1, 4, 1, 1)
    assert state["lvl_1L"].dtype == np.int64 and state["lvl_1L"].tolist() == [[0, 1, 1, 1, 1] + [2] * 9 + [3] * 16]
    assert state["attn_bias_for_masking"][0, 0, 1, 4] == 0 and state["attn_bias_for_masking"][0, 0, 1, 5] == -np.inf
    jax.tree.map(np.testing.assert_array_equal, params_from_torch_state(state, model), jax.tree.map(np.asarray, params))

    broken = dict(state)
    del broken["head.bias"]
    broken["blocks.0.attn.cached_k"] = np.zeros(3)
    broken["blocks.0.ffn.fc1.weight"] = np.zeros((256, 32))
    broken["lvl_1L"] = np.zeros((1, 30), np.int64)
    with pytest.raises(ValueError, match=r"missing \['head/output/bias'\].*unexpected \['blocks.0.attn.cached_k'\]"
                                         r".*blocks.0.ffn.fc1.weight: \(32, 256\) vs \(64, 256\)"
                                         r".*buffers that differ from the model's \['lvl_1L'\]"):
        params_from_torch_state(broken, model)
    with pytest.raises(ValueError, match=r"buffers that differ from the model's \['blocks.1.attn.zero_k_bias'\]"):
        params_from_torch_state({**state, "blocks.1.attn.zero_k_bias": np.ones(64, np.float32)}, model)
