"""VQ-GPT (LlamaGen's c2i GPT): preset sizes, init, cached decoding against the causal forward, the
class token's zero rotation, label drop, logical axis names and the state-dict converter."""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.blocks.attention import Attention, apply_rope
from marjax.models.gpt import (GPT, PRESETS, count_params, gpt_preset, init_boxed_params, init_caches,
                               init_params)
from marjax.models.gpt_torch_layout import params_from_torch_state, torch_state_from_params
from marjax.parallel.sharding import logical_axes

TINY = dict(vocab_size=64, grid_size=4, num_classes=10, width=64, depth=2, num_heads=2, multiple_of=32)

# (layers, heads, width, SwiGLU hidden) of LlamaGen's GPT_models, and the parameter count its
# definition gives (class table with the null row, token embeddings, layers, final norm, output),
# rounded as LlamaGen's comments and VQ-GPT's paper quote it.
SIZES = {
    "gpt_b": (12, 12, 768, 2048, 110.9e6, 0.05e6),
    "gpt_l": (24, 16, 1024, 2816, 342.9e6, 0.05e6),
    "gpt_xl": (36, 20, 1280, 3584, 774.7e6, 0.05e6),
    "gpt_xxl": (48, 24, 1536, 4096, 1411e6, 0.5e6),
    "gpt_xxxl": (48, 40, 2560, 6912, 3893e6, 0.5e6),
    "gpt_1b": (22, 32, 2048, 5632, 1199.6e6, 0.05e6),  # LlamaGen's "1.2B" is the t2i model; this is c2i
    "gpt_3b": (24, 32, 3200, 8704, 3097e6, 0.5e6),
}


def reference_count(depth: int, heads: int, width: int, hidden: int, classes: int = 1000, vocab: int = 16384) -> int:
    per_layer = width * 3 * width + width * width + 3 * width * hidden + 2 * width  # wqkv, wo, w1-3, 2 norms
    return (classes + 1) * width + vocab * width + depth * per_layer + width + width * vocab


@pytest.mark.parametrize("name", sorted(SIZES))
def test_preset_parameter_counts(name):
    depth, heads, width, hidden, quoted, rounding = SIZES[name]
    assert PRESETS[name] == dict(width=width, depth=depth, num_heads=heads)
    count = count_params(gpt_preset(name))
    assert count == reference_count(depth, heads, width, hidden)
    assert abs(count - quoted) <= rounding, count


def test_unknown_preset_or_field():
    with pytest.raises(ValueError, match="unknown GPT preset"):
        gpt_preset("gpt_s")
    with pytest.raises(ValueError, match=r"unknown GPT fields \['heads'\]"):
        gpt_preset("gpt_b", heads=3)


def random_params(model, seed=0):
    """Initial params moved away from LlamaGen's init (the zero output Linear included)."""
    @jax.jit
    def perturbed(key):
        params = init_params(model, key)
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
        return jax.tree.unflatten(tree, [v + 0.1 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)])

    return perturbed(jax.random.key(seed))


@pytest.fixture(scope="module")
def tiny_params():
    """Perturbed params of GPT(**TINY); dropout rates do not change the params."""
    return random_params(GPT(**TINY))


def forward(model, params, codes, labels, *args, **kwargs):
    """The teacher-forced logits, compiled."""
    return jax.jit(lambda *a: model.apply({"params": params}, *a, **kwargs))(codes, labels, *args)


def test_init_is_llamagens():
    params = jax.jit(lambda key: init_params(GPT(**{**TINY, "width": 128, "depth": 1}), key))(jax.random.key(0))
    flat = flax.traverse_util.flatten_dict(params)
    for path, value in flat.items():
        if path[-1] == "scale":
            np.testing.assert_array_equal(value, 1.0)
        elif path[0] == "head":
            np.testing.assert_array_equal(value, 0.0)
        else:
            assert abs(float(jnp.std(value)) - 0.02) < 0.002 and abs(float(jnp.mean(value))) < 0.002, path
    assert not [p for p in flat if p[-1] == "bias"]
    assert flat[("cls_embedding", "embedding")].shape == (11, 128)  # the null class row
    no_null = jax.eval_shape(lambda: init_params(GPT(**TINY, class_dropout=0.0), jax.random.key(0)))
    assert no_null["cls_embedding"]["embedding"].shape == (10, 64)


def test_logical_axis_names():
    specs = logical_axes(lambda: init_boxed_params(GPT(**TINY), jax.random.key(0)))
    names = {"/".join(p): tuple(v) for p, v in flax.traverse_util.flatten_dict(specs).items()}
    assert names["cls_embedding/embedding"] == ("classes", "embed")
    assert names["tok_embeddings/embedding"] == ("codes", "embed")
    assert names["layers_0/attention/qkv/kernel"] == ("embed", "qkv")
    assert names["layers_0/attention/proj/kernel"] == ("heads", "embed")
    assert names["layers_1/feed_forward/w2/kernel"] == ("mlp", "embed")
    assert names["head/output/kernel"] == ("embed", "codes")
    assert names["norm/scale"] == ("norm",)
    # every name is one the default sharding rules map, or a small norm weight
    assert {n for axes in names.values() for n in axes} == {"classes", "codes", "embed", "qkv", "heads", "mlp", "norm"}


def cached_logits(model, params, codes, labels):
    """Prefill, then one code per step inside one compiled `lax.scan`: (B, L, V), step i predicting code i."""
    @jax.jit
    def run(codes, labels):
        logits, caches = model.apply({"params": params}, labels, init_caches(model, codes.shape[0]),
                                     method=GPT.prefill)

        def step(caches, inputs):
            code, position = inputs
            return model.apply({"params": params}, code, position, caches, method=GPT.decode)[::-1]

        positions = jnp.arange(1, codes.shape[1])
        caches, steps = jax.lax.scan(step, caches, (codes[:, :-1].T, positions))
        return jnp.concatenate([logits[:, None], jnp.moveaxis(steps, 0, 1)], axis=1), caches

    return run(codes, labels)


@pytest.mark.parametrize("num_kv_heads", [None, 1])
def test_cached_decoding_equals_the_causal_forward(num_kv_heads, tiny_params):
    model = GPT(**TINY, num_kv_heads=num_kv_heads)
    params = tiny_params if num_kv_heads is None else random_params(model)
    codes = jax.random.randint(jax.random.key(2), (3, 16), 0, 64)
    labels = jnp.array([1, 10, 7])  # 10: the null class
    full = forward(model, params, codes, labels)
    assert full.shape == (3, 16, 64) and full.dtype == jnp.float32
    cached, caches = cached_logits(model, params, codes, labels)
    np.testing.assert_allclose(cached, full, rtol=1e-5, atol=1e-5)
    assert int(caches[0].length) == 16 and caches[0].keys().shape == (3, 17, num_kv_heads or 2, 32)
    # causal: a shorter prefix gives the same logits
    np.testing.assert_allclose(forward(model, params, codes[:, :7], labels), full[:, :7], rtol=1e-5, atol=1e-5)


def test_class_token_query_and_key_are_zero(tiny_params):
    """Under LlamaGen's 2-D RoPE the class token's q and k vanish: every query gives the class key logit 0,
    in the training forward and in the prefill."""
    model, params = GPT(**TINY), tiny_params
    codes, labels = jax.random.randint(jax.random.key(2), (2, 16), 0, 64), jnp.array([3, 4])

    @jax.jit
    def rotated_queries_and_keys():
        """(q, k) after the rope, (B, n, heads, hd), of every layer's attention in both calls."""
        seen = []

        def record(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if isinstance(context.module, Attention) and context.method_name == "__call__":
                seen.append(kwargs["rope"])  # after its qkv Linear's output
            elif context.module.name == "qkv" and context.method_name == "__call__" and out.ndim == 3:
                seen.append(out)
            return out

        with nn.intercept_methods(record):
            model.apply({"params": params}, codes, labels)
            model.apply({"params": params}, labels, init_caches(model, 2), method=GPT.prefill)
        rotated = []
        for qkv, rope in zip(seen[0::2], seen[1::2]):
            b, n, _ = qkv.shape
            q, k = (qkv[..., i * 64:(i + 1) * 64].reshape(b, n, 2, 32) for i in range(2))
            rotated.append((apply_rope(q, rope), apply_rope(k, rope)))
        return rotated

    rotated = rotated_queries_and_keys()
    assert [q.shape[1] for q, _ in rotated] == [16] * model.depth + [1] * model.depth
    for q, k in rotated:
        np.testing.assert_array_equal(q[:, 0], 0.0)
        np.testing.assert_array_equal(k[:, 0], 0.0)
        np.testing.assert_array_equal(jnp.einsum("bqhd,bhd->bqh", q, k[:, 0]), 0.0)
        if q.shape[1] > 1:  # the grid tokens are rotated, not zeroed
            assert float(jnp.abs(k[:, 1:]).min(axis=-1).max()) > 0


def test_label_drop_injected_or_drawn(tiny_params):
    model, params = GPT(**TINY), tiny_params
    codes, labels = jax.random.randint(jax.random.key(2), (3, 16), 0, 64), jnp.array([1, 2, 3])
    null = forward(model, params, codes, jnp.array([1, 10, 3]))
    dropped = forward(model, params, codes, labels, jnp.array([False, True, False]))
    np.testing.assert_array_equal(dropped, null)
    # training draws the drop per sample; at probability 1 every label is the null class
    always = GPT(**TINY, class_dropout=1.0, token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0)
    drawn = forward(always, params, codes, labels, deterministic=False, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_allclose(drawn, forward(model, params, codes, jnp.full((3,), 10)), rtol=1e-6, atol=1e-6)


def test_training_dropouts_use_the_dropout_rng(tiny_params):
    model, params = GPT(**TINY, drop_path_rate=0.5), tiny_params
    codes, labels = jax.random.randint(jax.random.key(2), (3, 16), 0, 64), jnp.array([1, 2, 3])

    @jax.jit
    def train(rng):
        return model.apply({"params": params}, codes, labels, deterministic=False, rngs={"dropout": rng})

    np.testing.assert_array_equal(train(jax.random.key(0)), train(jax.random.key(0)))
    assert not np.allclose(train(jax.random.key(0)), train(jax.random.key(1)))
    assert not np.allclose(train(jax.random.key(0)), forward(model, params, codes, labels))


def test_torch_state_round_trip_and_its_errors():
    model = GPT(**TINY, num_kv_heads=1)
    params = random_params(model)
    state = torch_state_from_params(params)
    layer = [f"layers.{{i}}.{name}.weight" for name in ("attention.wqkv", "attention.wo", "feed_forward.w1",
                                                         "feed_forward.w2", "feed_forward.w3", "attention_norm",
                                                         "ffn_norm")]
    assert sorted(state) == sorted(["cls_embedding.embedding_table.weight", "tok_embeddings.weight", "norm.weight",
                                    "output.weight"] + [key.format(i=i) for i in range(2) for key in layer])
    assert state["layers.1.attention.wqkv.weight"].shape == (128, 64)  # (out, in): [q 64 | k 32 | v 32]
    np.testing.assert_array_equal(state["output.weight"], np.asarray(params["head"]["output"]["kernel"]).T)
    back = params_from_torch_state(state, model)
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))

    broken = dict(state)
    del broken["norm.weight"]
    broken["freqs_cis"] = np.zeros(3)
    broken["layers.0.feed_forward.w1.weight"] = np.zeros((192, 32))
    with pytest.raises(ValueError, match=r"missing \['norm/scale'\].*unexpected \['freqs_cis'\]"
                                         r".*layers.0.feed_forward.w1.weight: \(32, 192\) vs \(64, 192\)"):
        params_from_torch_state(broken, model)
