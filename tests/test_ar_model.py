"""The causal AR baseline: cached decoding equals the full causal forward, causality, the
random order's target-position embedding, logical axes and preset sizes (that every cell trains:
tests/test_ar_task.py)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.models import mar
from marjax.models.ar import (AR, HEADS, ORDERS, PRESETS, ar_preset, count_params, in_order, init_boxed_params,
                              init_decode_caches, init_params)
from marjax.models.masking import raster_orders, sample_orders
from marjax.parallel.sharding import LAYER_AXIS, logical_axes

TINY_AR = dict(latent_size=4, latent_channels=4, width=32, depth=2, num_heads=4, num_classes=10, vocab_size=24,
               diffloss_depth=1, diffloss_width=32)
B, N, MUL = 2, 16, 2  # a 4x4 grid
CELLS = [(order, head) for order in ORDERS for head in HEADS]
LABELS, DROP = jnp.array([3, 7]), jnp.array([False, True])


def perturbed(params: dict, seed: int = 1) -> dict:
    """Every leaf plus small noise, so zero-initialised layers (the heads' outputs) are not zero."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def batch(model: AR, seed: int = 2) -> tuple[jax.Array, jax.Array]:
    """(tokens in grid order, orders): continuous tokens or codes; raster or random orders."""
    keys = jax.random.split(jax.random.key(seed))
    if model.head == "diffloss":
        tokens = jax.random.normal(keys[0], (B, N, model.token_dim))
    else:
        tokens = jax.random.randint(keys[0], (B, N), 0, model.vocab_size)
    orders = raster_orders(B, N) if model.order == "raster" else sample_orders(keys[1], B, N)
    return tokens, orders


class Cell:
    """One (order, head) model with perturbed params and its compiled full forward."""

    def __init__(self, order: str, head: str, **fields):
        self.model = AR(**TINY_AR, order=order, head=head, **fields)
        self.params = perturbed(jax.jit(functools.partial(init_params, self.model))(jax.random.key(0)))
        self.tokens, self.orders = batch(self.model)
        apply = functools.partial(self.model.apply, method=AR.condition)
        self.condition = jax.jit(lambda params, tokens, orders: apply({"params": params}, tokens, LABELS, orders, DROP))

    def full(self, tokens: jax.Array | None = None, orders: jax.Array | None = None) -> np.ndarray:
        tokens = self.tokens if tokens is None else tokens
        return np.asarray(self.condition(self.params, tokens, self.orders if orders is None else orders))


@pytest.fixture(scope="module", params=CELLS, ids=["-".join(c) for c in CELLS])
def cell(request) -> Cell:
    return Cell(*request.param)


def cached_conditions(model: AR, params: dict, tokens: jax.Array, orders: jax.Array) -> np.ndarray:
    """z (B, N, D) from `prefill` and N - 1 `decode_step`s, teacher-forced, in one `lax.scan` (as a
    sampler runs them)."""
    variables = {"params": params}

    @jax.jit
    def run(tokens, orders):
        sequence = in_order(tokens, orders)
        z0, caches = model.apply(variables, LABELS, DROP, orders, init_decode_caches(model, B), method=AR.prefill)

        def step(caches, s):
            z, caches = model.apply(variables, sequence[:, s], s, orders, caches, method=AR.decode_step)
            return caches, z

        _, zs = jax.lax.scan(step, caches, jnp.arange(N - 1))
        return jnp.concatenate([z0[:, None], jnp.moveaxis(zs, 0, 1)], axis=1)

    return np.asarray(run(tokens, orders))


def test_cached_decoding_equals_the_full_causal_forward(cell):
    cached = cached_conditions(cell.model, cell.params, cell.tokens, cell.orders)
    np.testing.assert_allclose(cached, cell.full(), rtol=1e-5, atol=1e-5)


def test_cached_decoding_with_scanned_layers():
    """Stacked params take stacked caches (`block_stack.init_caches`): the same numbers."""
    scanned = Cell("random", "diffloss", scan_layers=True)
    cached = cached_conditions(scanned.model, scanned.params, scanned.tokens, scanned.orders)
    np.testing.assert_allclose(cached, scanned.full(), rtol=1e-5, atol=1e-5)


def test_a_token_changes_only_the_conditions_after_it(cell):
    j = 5  # generation step
    position = cell.orders[:, j]
    rows = jnp.arange(B)
    if cell.model.head == "diffloss":
        changed = cell.tokens.at[rows, position].add(1.0)
    else:
        changed = cell.tokens.at[rows, position].set((cell.tokens[rows, position] + 1) % cell.model.vocab_size)
    before, after = cell.full(), cell.full(changed)
    np.testing.assert_allclose(after[:, :j + 1], before[:, :j + 1], atol=1e-6)
    assert np.all(np.abs(after[:, j + 1:] - before[:, j + 1:]).max(axis=-1) > 1e-4)


def test_the_random_order_condition_names_its_target(cell):
    """Two orders with the same first k steps, then different positions at step k: z_k differs
    with the random order's target embedding, and not without it (raster)."""
    k = 5
    swapped = cell.orders.at[:, [k, k + 1]].set(cell.orders[:, [k + 1, k]])
    before, after = cell.full(), cell.full(orders=swapped)
    np.testing.assert_allclose(after[:, :k], before[:, :k], atol=1e-6)
    gap = np.abs(after[:, k] - before[:, k]).max(axis=-1)
    if cell.model.order == "random":
        assert np.all(gap > 1e-4)
    else:
        np.testing.assert_allclose(after[:, k], before[:, k], atol=1e-6)


def test_head_outputs(cell):
    """The heads a sampler calls on decoded conditions: softmax logits; DiffLoss tokens, here with
    guidance on the rows [cond (label 3); uncond (label dropped)]."""
    model, variables = cell.model, {"params": cell.params}
    z = jnp.asarray(cell.full()[:, 0])
    if model.head == "softmax":
        assert model.apply(variables, z, method=AR.logits).shape == (B, model.vocab_size)
        return
    noise = jax.random.normal(jax.random.key(5), (B // 2, model.token_dim))
    tokens = model.apply(variables, z, lambda j: noise, 1.0, 2.0, 5, method=AR.sample_tokens)
    assert tokens.shape == (B // 2, model.token_dim) and np.all(np.isfinite(tokens))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_params_carry_logical_axes(scan_layers):
    model = AR(**TINY_AR, order="random", head="diffloss", scan_layers=scan_layers)
    names = logical_axes(lambda: init_boxed_params(model, jax.random.key(0)))
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    for name, shape in zip(jax.tree.leaves(names, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
                           jax.tree.leaves(shapes)):
        assert len(name) == shape.ndim
    assert names["pos_embed_learned"] == jax.sharding.PartitionSpec(None, "seq", "embed")
    if scan_layers:
        assert names["blocks"]["attn"]["qkv"]["kernel"][0] == LAYER_AXIS


# Parameter counts of the presets with the DiffLoss head in raster order (the random order adds
# an N x width target table: 196,608 / 262,144 / 327,680).
AR_COUNTS = {"ar_base": 206_841_120, "ar_large": 476_619_296, "ar_huge": 939_941_664}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_counts(name):
    assert count_params(ar_preset(name, scan_layers=True)) == AR_COUNTS[name]
    width, seq_len = PRESETS[name]["width"], 256
    assert count_params(ar_preset(name, scan_layers=True, order="random")) == AR_COUNTS[name] + seq_len * width


def test_ar_large_has_about_the_parameters_of_mar_large():
    """The paper: the causal baseline doubles the depth so the count stays MAR's. AR-L lacks MAR-L's
    decoder_embed, mask token, two of its three position tables and a norm: 1.71M (0.36%) fewer."""
    ar_large, mar_large = count_params(ar_preset("ar_large", scan_layers=True)), mar.count_params(
        mar.mar_preset("mar_large", scan_layers=True))
    assert mar_large == 478_326_304 and abs(ar_large - mar_large) / mar_large < 0.005


def test_unscanned_and_scanned_params_count_the_same():
    assert count_params(AR(**TINY_AR)) == count_params(AR(**TINY_AR, scan_layers=True))


def test_unknown_names_are_reported():
    with pytest.raises(ValueError, match="ar_base"):
        ar_preset("ar_tiny")
    with pytest.raises(ValueError, match="widht"):
        ar_preset("ar_base", widht=12)
    with pytest.raises(ValueError, match="zigzag"):
        count_params(AR(**TINY_AR, order="zigzag"))
