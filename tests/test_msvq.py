"""VAR's multi-scale quantizer and VQVAE without the reference: sizes, shapes, the scale-to-Phi
table, the training forward's parts and a codes -> f_hat -> codes round trip."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from marjax.tokenizers.msvq import MultiScaleQuantizer, phi_table, update_hit_ema, usage_percent
from marjax.tokenizers.msvq_vae import VQVAE, init_vqvae_params

PATCH_NUMS = (1, 2, 3, 4, 6, 8)
QUANTIZER = MultiScaleQuantizer(codebook_size=32, code_dim=4, patch_nums=PATCH_NUMS)


def call(module, params, method, *args):
    """module.method(*args) with `params`, compiled: much faster than op by op."""
    return jax.jit(lambda p, *a: module.apply({"params": p}, *a, method=method))(params, *args)


def quantizer_params(seed=0):
    """Random params of QUANTIZER's shapes, from numpy (compiling `init`'s random draws takes seconds)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: QUANTIZER.init(jax.random.key(0), jnp.zeros((1, 8, 8, 4))))["params"]
    return jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), nn.unbox(shapes))


def random_codes(batch=2, seed=1):
    keys = jax.random.split(jax.random.key(seed), len(PATCH_NUMS))
    return [jax.random.randint(key, (batch, p, p), 0, 32) for key, p in zip(keys, PATCH_NUMS)]


def test_var_vae_has_the_published_size():
    model = VQVAE()
    shapes = jax.eval_shape(lambda: init_vqvae_params(model, jax.random.key(0)))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == 108_948_355  # VAR.md: 108.95M
    assert model.stride == 16 and len(shapes["quantizer"]) == 1 + 4  # codebook + 4 Phis
    assert shapes["quantizer"]["codebook"].shape == (4096, 32)
    assert {k for k in shapes["decoder"] if "attn" in k} == {"mid_attn_1", "up_4_attn_0", "up_4_attn_1", "up_4_attn_2"}
    assert {k for k in shapes["encoder"] if "attn" in k} == {"mid_attn_1", "down_4_attn_0", "down_4_attn_1"}


def test_phi_tables():
    assert phi_table(10, 4) == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)  # VAR's published tokenizer
    assert phi_table(4, 4) == (0, 1, 2, 3)
    assert phi_table(6, 4) == (0, 0, 1, 2, 3, 3)
    assert phi_table(10, 10) == tuple(range(10))  # non-shared: one Phi a scale
    assert phi_table(10, 1) == (0,) * 10  # fully shared


def test_shapes_of_what_the_transformer_needs():
    params = quantizer_params()
    codes = call(QUANTIZER, params, MultiScaleQuantizer.codes, jax.random.normal(jax.random.key(2), (3, 8, 8, 4)))
    assert [c.shape for c in codes] == [(3, p, p) for p in PATCH_NUMS]
    assert all(c.dtype == jnp.int32 for c in codes)
    inputs = call(QUANTIZER, params, MultiScaleQuantizer.teacher_forcing_input, codes)
    assert inputs.shape == (3, sum(p * p for p in PATCH_NUMS) - 1, 4)
    f_hat, following = call(QUANTIZER, params, lambda m, c: m.next_scale_input(jnp.zeros((3, 8, 8, 4)), m.embed(c), 0),
                            codes[0])
    assert f_hat.shape == (3, 8, 8, 4) and following.shape == (3, 4, 4)
    assert call(QUANTIZER, params, MultiScaleQuantizer.latents_from_codes, codes).shape == (3, 8, 8, 4)


def test_teacher_forcing_input_is_the_sampling_steps():
    def steps(module, codes):
        f_hat, inputs = jnp.zeros((2, 8, 8, 4)), []
        for k, c in enumerate(codes):
            f_hat, following = module.next_scale_input(f_hat, module.embed(c), k)
            inputs.append(following)
        assert inputs[-1] is None
        return f_hat, jnp.concatenate(inputs[:-1], 1)

    params, codes = quantizer_params(), random_codes()
    f_hat, inputs = call(QUANTIZER, params, steps, codes)
    np.testing.assert_allclose(call(QUANTIZER, params, MultiScaleQuantizer.teacher_forcing_input, codes), inputs,
                               rtol=1e-6)
    np.testing.assert_allclose(call(QUANTIZER, params, MultiScaleQuantizer.latents_from_codes, codes), f_hat,
                               rtol=1e-6, atol=1e-6)


def test_training_forward_value_gradients_and_loss():
    params = quantizer_params()
    f = jax.random.normal(jax.random.key(3), (2, 8, 8, 4))
    out, codes, stats = call(QUANTIZER, params, MultiScaleQuantizer.__call__, f)
    f_hats = [call(QUANTIZER, params, MultiScaleQuantizer.latents_from_codes, codes[:k + 1])
              for k in range(len(PATCH_NUMS))]
    np.testing.assert_allclose(out, f_hats[-1], rtol=1e-5, atol=1e-6)
    mse = np.mean([float(jnp.mean((g - f) ** 2)) for g in f_hats])
    np.testing.assert_allclose(stats["vq_loss"], 1.25 * mse, rtol=1e-5)
    np.testing.assert_array_equal(stats["hits"].sum(1), [2 * p * p for p in PATCH_NUMS])
    weights = jax.random.normal(jax.random.key(4), f.shape)
    grad = jax.jit(jax.grad(lambda f: jnp.sum(QUANTIZER.apply({"params": params}, f)[0] * weights)))(f)
    np.testing.assert_allclose(grad, weights)  # straight through
    # the loss reaches f only through its commitment term, beta mse(sg f_hat, f)
    grad_loss = jax.jit(jax.grad(lambda f: QUANTIZER.apply({"params": params}, f)[2]["vq_loss"]))(f)
    expected = sum(0.25 * 2 * (f - g) / f.size for g in f_hats) / len(PATCH_NUMS)
    np.testing.assert_allclose(grad_loss, expected, rtol=1e-4, atol=1e-8)


def test_codes_to_fhat_to_codes_round_trip():
    """A quantizer built so that the round trip is exact: identity Phis; each scale's codes own
    a sign channel (code 2k: +1, 2k + 1: -1) and a marker channel (2^(K - k + 1) on both), with
    patch_nums whose area(bicubic(.)) keeps every sign. The markers, constant fields that resizing
    keeps exactly, make scale k's codes the nearest at scale k; the sign picks between them."""
    patch_nums = (1, 2, 4, 8)
    k = len(patch_nums)
    codebook = np.zeros((2 * k, 2 * k), np.float32)
    for scale in range(k):
        codebook[2 * scale:2 * scale + 2, scale] = (1.0, -1.0)
        codebook[2 * scale:2 * scale + 2, k + scale] = 2.0 ** (k - scale + 1)
    identity = np.zeros((3, 3, 2 * k, 2 * k), np.float32)
    identity[1, 1] = np.eye(2 * k)
    phis = {f"phi_{i}": {"kernel": identity, "bias": np.zeros(2 * k, np.float32)} for i in range(4)}
    quantizer = MultiScaleQuantizer(2 * k, 2 * k, patch_nums)
    keys = jax.random.split(jax.random.key(5), k)
    codes = [2 * s + jax.random.randint(key, (3, p, p), 0, 2) for s, (key, p) in enumerate(zip(keys, patch_nums))]
    back = call(quantizer, {"codebook": codebook, **phis}, lambda m, c: m.codes(m.latents_from_codes(c)), codes)
    for scale, (ours, theirs) in enumerate(zip(back, codes)):
        np.testing.assert_array_equal(ours, theirs, err_msg=f"scale {scale}")


def test_hit_ema_and_usage():
    hits = jnp.array([[4.0, 0.0, 0.0], [1.0, 1.0, 2.0]])
    ema = update_hit_ema(jnp.full((2, 3), 7.0), hits, 0)
    np.testing.assert_allclose(ema, [[4.0, 0.0, 0.0], [0.9 * 7 + 0.1, 0.9 * 7 + 0.1, 0.9 * 7 + 0.2]], rtol=1e-6)
    late = update_hit_ema(ema, hits, 50)  # counters 100, 101: past the switch to 0.99
    np.testing.assert_allclose(late, 0.99 * ema + 0.01 * hits, rtol=1e-6)
    # 3 scales at step 33: counters 99, 100, 101, so scale 0 still keeps 0.9 and the others 0.99
    straddling = update_hit_ema(jnp.ones((3, 2)), jnp.full((3, 2), 2.0), 33)
    np.testing.assert_allclose(straddling, [[0.9 + 0.2] * 2, [0.99 + 0.02] * 2, [0.99 + 0.02] * 2], rtol=1e-6)
    # margin 0.08 * 150 / 3 = 4: scale 0 uses code 0 only, scale 1 all three
    np.testing.assert_allclose(usage_percent(jnp.array([[4.0, 3.9, 0.0], [5.0, 4.0, 9.0]]), 150),
                               [100 / 3, 100.0], rtol=1e-6)
