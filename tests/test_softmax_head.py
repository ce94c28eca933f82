"""The softmax head: cross-entropy, CFG on logits, LlamaGen's top-k/top-p filter and sampling."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.heads.softmax import (SoftmaxHead, cfg_logits, cross_entropy, sample_logits, token_cross_entropy,
                                  top_k_top_p_filter)


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_llamagen_filter(logits, top_k=0, top_p=1.0):
    """LlamaGen's top_k_top_p_filtering (min_tokens_to_keep=1) restated in NumPy, float64, ties by index."""
    out = np.array(logits, np.float64)
    if top_k > 0:
        k = min(max(top_k, 1), out.shape[-1])
        kth = -np.sort(-out, axis=-1)[..., k - 1:k]
        out[out < kth] = -np.inf
    if top_p < 1.0:
        for row in out:
            order = np.argsort(-row, kind="stable")
            probs = np.exp(row[order] - row.max())
            probs /= probs.sum()  # exp / sum keeps 1/8 exact, so the all-tied row tests cumsum == top_p
            remove_sorted = np.cumsum(probs) > top_p
            remove_sorted[1:] = remove_sorted[:-1].copy()
            remove_sorted[0] = False
            row[order[remove_sorted]] = -np.inf
    return out


def kept(x):
    return np.isfinite(np.asarray(x))


def test_cross_entropy_matches_numpy_with_mask():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, size=(2, 5))
    mask = np.array([[1, 0, 1, 1, 0], [0, 0, 1, 0, 1]], bool)
    per = -np.take_along_axis(np_log_softmax(logits), targets[..., None], -1)[..., 0]

    np.testing.assert_allclose(token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets)), per, rtol=1e-5)
    np.testing.assert_allclose(cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask)),
                               per[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(cross_entropy(jnp.asarray(logits), jnp.asarray(targets)), per.mean(), rtol=1e-5)
    assert float(cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.zeros((2, 5), bool))) == 0.0

    # bf16 logits are upcast: same loss as their float32 values.
    bf16 = jnp.asarray(logits, jnp.bfloat16)
    np.testing.assert_allclose(cross_entropy(bf16, jnp.asarray(targets)),
                               cross_entropy(bf16.astype(jnp.float32), jnp.asarray(targets)), rtol=1e-6)


def test_cross_entropy_padding_targets_masked_out_stay_finite():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 5)), jnp.float32)
    targets = jnp.array([[2, -1, 7, 0]])
    mask = jnp.array([[True, False, False, True]])
    assert np.isnan(np.asarray(token_cross_entropy(logits, targets))[0, 1:3]).all()
    loss, grad = jax.value_and_grad(cross_entropy)(logits, targets, mask)
    np.testing.assert_allclose(loss, cross_entropy(logits[:, ::3], targets[:, ::3]), rtol=1e-6)
    assert np.isfinite(np.asarray(grad)).all()
    assert not np.asarray(grad)[0, 1:3].any()


def test_cfg_logits_matches_numpy_and_cfg_interval():
    rng = np.random.default_rng(2)
    cond, uncond = rng.normal(size=(2, 3, 11)).astype(np.float32)
    scale = 4.0
    expected = uncond.astype(np.float64) + (cond - uncond.astype(np.float64)) * scale
    np.testing.assert_allclose(cfg_logits(jnp.asarray(cond), jnp.asarray(uncond), scale), expected, rtol=1e-5)

    # LlamaGen: prefill (token 0) guided; decode step i (token i + 1) uses cond only once i > cfg_interval.
    cfg_interval, n_tokens = 2, 7
    guided_ref = [True] + [not (cfg_interval > -1 and i > cfg_interval) for i in range(n_tokens - 1)]
    mix = jax.jit(lambda c, u, s, t, ci: cfg_logits(c, u, s, token_index=t, cfg_interval=ci))
    for t, guided in enumerate(guided_ref):
        out = np.asarray(mix(cond, uncond, scale, t, cfg_interval))
        np.testing.assert_allclose(out, expected if guided else cond, rtol=1e-5)
        np.testing.assert_allclose(mix(cond, uncond, scale, t, -1), expected, rtol=1e-5)
    assert mix._cache_size() == 1
    with pytest.raises(ValueError, match="token_index"):
        cfg_logits(cond, uncond, scale, cfg_interval=3)


def test_top_k_keeps_exactly_k_largest_and_ties():
    logits = np.random.default_rng(3).permutation(np.arange(20, dtype=np.float32))[None] * 0.5
    for k in (1, 5, 19):
        out = np.asarray(top_k_top_p_filter(jnp.asarray(logits), top_k=k))
        assert set(np.flatnonzero(kept(out[0]))) == set(np.argsort(-logits[0])[:k])
        np.testing.assert_array_equal(out[kept(out)], logits[kept(out)])
    np.testing.assert_array_equal(top_k_top_p_filter(jnp.asarray(logits), top_k=0), logits)
    np.testing.assert_array_equal(top_k_top_p_filter(jnp.asarray(logits), top_k=100), logits)
    # Ties with the k-th largest are all kept, as in LlamaGen (`logits < kth` is removed).
    tied = jnp.array([[1.0, 3.0, 3.0, 2.0, 3.0, 0.0]])
    np.testing.assert_array_equal(kept(top_k_top_p_filter(tied, top_k=2))[0], [0, 1, 1, 0, 1, 0])


def test_top_p_hand_computed_case():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs)[[2, 0, 3, 1]][None]  # unsorted on purpose
    # cumsum 0.5, 0.8, 0.95, 1.0 > 0.7 -> (F, T, T, T), shifted -> keep the 0.5 and 0.3 tokens.
    np.testing.assert_array_equal(kept(np_llamagen_filter(logits, top_p=0.7))[0], [0, 1, 0, 1])
    np.testing.assert_array_equal(kept(top_k_top_p_filter(jnp.asarray(logits, jnp.float32), top_p=0.7))[0],
                                  [0, 1, 0, 1])


LOGITS = np.array([
    [2.0, -1.0, 0.5, 1.5, -3.0, 0.0, 1.0, -0.5],
    [12.0, 0.0, 0.1, -0.2, 0.3, 0.0, -1.0, 0.2],   # one token holds almost all the mass
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],      # all tied: kept in index order; cumsum hits 0.5 exactly
], np.float32)


@pytest.mark.parametrize("top_k, top_p", [(0, 0.3), (0, 0.6), (0, 0.9), (0, 0.999), (0, 0.0), (3, 0.8), (5, 0.95),
                                          (2, 1.0), (0, 0.5), (0, 0.5 - 1e-3)])
def test_top_p_matches_llamagen_restatement(top_k, top_p):
    expected = np_llamagen_filter(LOGITS, top_k, top_p)
    out = np.asarray(top_k_top_p_filter(jnp.asarray(LOGITS), top_k, top_p))
    np.testing.assert_array_equal(kept(out), kept(expected))
    np.testing.assert_array_equal(out[kept(out)], LOGITS[kept(out)])
    assert kept(out).sum(-1).min() >= 1
    if top_k == 0 and top_p < 0.99:
        assert kept(out)[1].sum() == 1  # the dominant token alone passes any top_p below its mass (~0.9999)


def test_top_p_one_is_off_when_traced():
    # float32 cumsums pass 1.0 by rounding on some of these rows (and on 10 tied logits), so
    # `cumsum > 1.0` alone would drop tail tokens; LlamaGen skips top-p when top_p >= 1.0.
    logits = jax.random.normal(jax.random.key(0), (64, 1000)) * 3
    filt = jax.jit(lambda x, p: top_k_top_p_filter(x, 0, p))
    np.testing.assert_array_equal(filt(logits, 1.0), logits)
    np.testing.assert_array_equal(filt(jnp.zeros((1, 10)), 1.0), np.zeros((1, 10)))
    assert 0 < kept(filt(logits, 0.5)).sum() < logits.size


def test_filter_under_jit_traces_once_for_two_top_p():
    traces = []

    @jax.jit
    def filt(logits, top_p):
        traces.append(None)
        return top_k_top_p_filter(logits, 6, top_p)

    a, b = filt(jnp.asarray(LOGITS), 0.5), filt(jnp.asarray(LOGITS), 0.9)
    assert len(traces) == 1
    np.testing.assert_array_equal(kept(a), kept(np_llamagen_filter(LOGITS, 6, 0.5)))
    np.testing.assert_array_equal(kept(b), kept(np_llamagen_filter(LOGITS, 6, 0.9)))
    assert not np.array_equal(kept(a), kept(b))


def test_sample_deterministic_and_never_samples_filtered_tokens():
    logits = jnp.broadcast_to(jnp.asarray(LOGITS[0]), (4000, 8))
    draw = jax.jit(lambda rng, x, t, p: sample_logits(rng, x, t, top_k=5, top_p=p))
    a = np.asarray(draw(jax.random.key(7), logits, 1.0, 0.9))
    assert a.dtype == np.int32 and a.shape == (4000,)
    np.testing.assert_array_equal(a, draw(jax.random.key(7), logits, 1.0, 0.9))
    assert not np.array_equal(a, draw(jax.random.key(8), logits, 1.0, 0.9))
    allowed = set(np.flatnonzero(kept(np_llamagen_filter(LOGITS[:1], 5, 0.9))[0]))
    assert set(a.tolist()) == allowed  # all allowed tokens appear, nothing else
    b = np.asarray(draw(jax.random.key(7), logits, 1.0, 0.5))
    assert set(b.tolist()) == set(np.flatnonzero(kept(np_llamagen_filter(LOGITS[:1], 5, 0.5))[0]))
    assert draw._cache_size() == 1


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_sample_temperature_follows_softmax(temperature):
    n = 8000
    samples = sample_logits(jax.random.key(1), jnp.broadcast_to(jnp.asarray(LOGITS[0]), (n, 8)), temperature)
    freq = np.bincount(np.asarray(samples), minlength=8) / n
    np.testing.assert_allclose(freq, np.exp(np_log_softmax(LOGITS[0] / temperature)), atol=0.02)


def test_greedy_and_zero_temperature():
    logits = jnp.asarray(LOGITS[:2])
    argmax = np.argmax(LOGITS[:2], -1)
    np.testing.assert_array_equal(sample_logits(jax.random.key(0), logits, greedy=True), argmax)
    np.testing.assert_array_equal(sample_logits(jax.random.key(1), logits, 1.0, 3, 0.5, greedy=True), argmax)
    many = jnp.broadcast_to(logits[0], (500, 8))
    np.testing.assert_array_equal(sample_logits(jax.random.key(2), many, 0.0), np.full(500, argmax[0]))


def test_softmax_head_shapes_dtype_and_params():
    x = jax.random.normal(jax.random.key(0), (2, 3, 16))
    head = SoftmaxHead(vocab_size=10, dtype=jnp.bfloat16, use_bias=True, kernel_init=nn.initializers.normal(0.02))
    params = nn.unbox(head.init(jax.random.key(1), x))["params"]["output"]
    assert params["kernel"].shape == (16, 10) and params["bias"].shape == (10,)
    assert params["kernel"].dtype == jnp.float32
    logits = head.apply({"params": {"output": params}}, x)
    assert logits.shape == (2, 3, 10) and logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, np.asarray(x) @ np.asarray(params["kernel"]), atol=2e-3)
    zero_head = SoftmaxHead(vocab_size=10)
    boxed = zero_head.init(jax.random.key(1), x)
    assert set(boxed["params"]["output"]) == {"kernel"}
    assert boxed["params"]["output"]["kernel"].names == ("embed", "codes")
    assert not np.asarray(zero_head.apply(nn.unbox(boxed), x)).any()  # LlamaGen's zero-initialised output
