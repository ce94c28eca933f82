"""The train step: one compilation for all mask counts, the reference recipe, learning on toy data."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from marjax.blocks.block_stack import stack_block_params
from marjax.models.common import patchify
from marjax.models.mar import BLOCK_GROUPS, MAR, init_params
from marjax.models.masking import bucket_index, mask_count_buckets, mask_from_orders, sample_orders
from marjax.tasks.mar_step import make_train_step, weight_decay_mask
from marjax.tasks.recipe import learning_rate_schedule
from marjax.tasks.train_state import ema_rate_at
from tests.conftest import TINY, mar_optimizer, mar_state


def toy_batch(n=16):
    """Two classes of fixed 8x8x4 patterns plus a little noise."""
    labels = jnp.arange(n) % 2
    base = jnp.stack([jnp.linspace(-0.8, 0.8, 256).reshape(8, 8, 4), jnp.cos(jnp.arange(256.0)).reshape(8, 8, 4)])
    latents = base[labels] + 0.05 * jax.random.normal(jax.random.key(7), (n, 8, 8, 4))
    return {"latents": latents, "labels": labels}


@pytest.mark.parametrize("mask_buckets", [1, 3])
def test_one_compilation_for_twenty_steps_with_varying_mask_counts(tiny_model, mask_buckets):
    schedule = learning_rate_schedule(1e-3, 5)
    tx = mar_optimizer(schedule)
    step_fn = make_train_step(tiny_model, tx, schedule, mask_buckets=mask_buckets)
    traces = []

    def counted(state, batch, rng):
        traces.append(1)  # runs once per trace, i.e. per compilation
        return step_fn(state, batch, rng)

    jitted = jax.jit(counted, donate_argnums=0)
    state = mar_state(tiny_model, tx, jax.random.key(0))
    ratios = []
    for i in range(20):
        state, metrics = jitted(state, toy_batch(), jax.random.key(1))
        ratios.append(float(metrics["mask_ratio"]))
    assert len(traces) == 1
    assert len(set(ratios)) >= 3, ratios  # the mask count really changed between steps
    assert int(state.step) == 20
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_mask_buckets_change_the_shapes_not_the_step():
    """Three buckets (encoder slots and DiffLoss positions fitted to the mask count) give the
    one-bucket step's losses and params, over steps whose mask counts fall in every bucket.
    Without dropout: hashed dropout masks depend on the array shape."""
    model = MAR(**{**TINY, "attn_dropout": 0.0, "proj_dropout": 0.0})
    schedule = learning_rate_schedule(1e-3, 2)
    tx = mar_optimizer(schedule)
    buckets = mask_count_buckets(model.seq_len, 0.7, 3)
    runs = {}
    for count in (1, 3):
        step = jax.jit(make_train_step(model, tx, schedule, mask_buckets=count, ema_rate=0.5))
        state = mar_state(model, tx, jax.random.key(0))
        losses, hit = [], set()
        for _ in range(12):
            state, metrics = step(state, toy_batch(), jax.random.key(1))
            losses.append(float(metrics["loss"]))
            num_masked = round(float(metrics["mask_ratio"]) * model.seq_len)
            hit.add(int(bucket_index(jnp.int32(num_masked), buckets)))
        runs[count] = (losses, state, hit)
    assert runs[3][2] == {0, 1, 2}
    np.testing.assert_allclose(runs[3][0], runs[1][0], rtol=2e-5)
    for name in ("params", "ema_params"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6),
                     getattr(runs[3][1], name), getattr(runs[1][1], name))


def test_loss_falls_on_a_toy_dataset(tiny_model):
    schedule = learning_rate_schedule(2e-3, 10)
    tx = mar_optimizer(schedule)
    state = mar_state(tiny_model, tx, jax.random.key(0))
    step = jax.jit(make_train_step(tiny_model, tx, schedule, ema_rate=0.9), donate_argnums=0)
    batch = toy_batch()
    tokens = patchify(batch["latents"], 2)
    orders = sample_orders(jax.random.key(3), 16, 16)
    mask = mask_from_orders(orders, jnp.int32(13))
    t = jax.random.randint(jax.random.key(4), (16 * 16 * 4,), 0, 1000)
    noise = jax.random.normal(jax.random.key(5), (16 * 16 * 4, 4 * 4))

    def fixed_loss(params):
        loss, _ = tiny_model.apply({"params": params}, tokens, batch["labels"], mask, jnp.zeros(16, bool),
                                   t, noise, 4)
        return float(loss)

    before = fixed_loss(state.params)
    for _ in range(150):
        state, _ = step(state, batch, jax.random.key(6))
    assert fixed_loss(state.params) < 0.6 * before
    assert fixed_loss(state.ema_params) < 0.8 * before


def test_weight_decay_mask_follows_the_reference():
    params = init_params(MAR(**TINY), jax.random.key(0))
    mask = weight_decay_mask(params)
    assert mask["class_emb"]["embedding"] and mask["fake_latent"] and mask["mask_token"]
    assert mask["encoder_pos_embed_learned"] and mask["diffusion_pos_embed_learned"]
    assert mask["z_proj"]["kernel"] and not mask["z_proj"]["bias"]
    assert not mask["z_proj_ln"]["scale"] and not mask["encoder_blocks_0"]["norm1"]["bias"]
    assert mask["encoder_blocks_0"]["attn"]["qkv"]["kernel"]
    assert not any(jax.tree.leaves(mask["diffloss"]))


def test_weight_decay_mask_of_stacked_blocks_is_the_unstacked_decision():
    depth2 = {**TINY, "encoder_depth": 2, "decoder_depth": 2}
    unscanned = jax.eval_shape(lambda: init_params(MAR(**depth2), jax.random.key(0)))
    scanned = jax.eval_shape(lambda: init_params(MAR(**depth2, scan_layers=True), jax.random.key(0)))
    mask = weight_decay_mask(scanned)
    assert not mask["decoder_blocks"]["norm2"]["scale"] and not mask["decoder_blocks"]["attn"]["qkv"]["bias"]
    expected = stack_block_params(weight_decay_mask(unscanned), BLOCK_GROUPS)
    assert mask == jax.tree.map(lambda decisions: bool(np.all(decisions)), expected)


def test_adamw_decays_only_masked_params():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,)), "diffloss": {"k": jnp.ones((2, 2))}}
    tx = mar_optimizer(optax.constant_schedule(0.1), weight_decay=0.5, grad_clip=None)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.05)  # -lr * wd * p, Adam term zero for zero grads
    np.testing.assert_allclose(updates["b"], 0.0)
    np.testing.assert_allclose(updates["diffloss"]["k"], 0.0)


def test_grad_clip_and_ema(tiny_model):
    schedule = learning_rate_schedule(1e-3, 0)
    tx = mar_optimizer(schedule, grad_clip=1e-6)
    state = mar_state(tiny_model, tx, jax.random.key(0))
    new, metrics = jax.jit(make_train_step(tiny_model, tx, schedule, ema_rate=0.75))(state, toy_batch(), jax.random.key(1))
    expected = jax.tree.map(lambda e, p: 0.75 * e + 0.25 * p, state.ema_params, new.params)
    for a, b in zip(jax.tree.leaves(new.ema_params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert float(metrics["grad_norm"]) > 1e-6  # reported before clipping


def test_ema_warmup_follows_the_params_early_and_reaches_the_rate(tiny_model):
    """Short runs (configs/folder.py): without the warm-up, rate 0.999 still weighs the initial
    weights 37% at step 1,000, and early EMA grids look like noise."""
    assert ema_rate_at(0.999, jnp.int32(0), False) == 0.999
    np.testing.assert_allclose(ema_rate_at(0.999, jnp.int32(0), True), 0.1)
    np.testing.assert_allclose(ema_rate_at(0.999, jnp.int32(1000), True), 1001 / 1010)
    np.testing.assert_allclose(ema_rate_at(0.999, jnp.int32(20_000), True), 0.999)
    initial_weight = np.prod([float(ema_rate_at(0.999, jnp.int32(n), True)) for n in range(1000)])
    assert initial_weight < 1e-3 < 0.999 ** 1000
    schedule = learning_rate_schedule(1e-3, 0)
    tx = mar_optimizer(schedule)
    state = mar_state(tiny_model, tx, jax.random.key(0))
    step = make_train_step(tiny_model, tx, schedule, ema_rate=0.999, ema_warmup=True)
    new, _ = jax.jit(step)(state, toy_batch(), jax.random.key(1))
    expected = jax.tree.map(lambda e, p: 0.1 * e + 0.9 * p, state.ema_params, new.params)
    for a, b in zip(jax.tree.leaves(new.ema_params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_learning_rate_schedules():
    constant = learning_rate_schedule(8e-4, 100)
    assert float(constant(0)) == 0.0
    np.testing.assert_allclose(float(constant(50)), 4e-4, rtol=1e-6)
    np.testing.assert_allclose(float(constant(5000)), 8e-4, rtol=1e-6)
    cosine = learning_rate_schedule(1e-3, 10, "cosine", total_steps=110, min_lr=1e-5)
    np.testing.assert_allclose(float(cosine(60)), 1e-5 + (1e-3 - 1e-5) * 0.5, rtol=1e-5)
    np.testing.assert_allclose(float(cosine(110)), 1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="total_steps"):
        learning_rate_schedule(1e-3, 10, "cosine")
