"""Remat and scan-over-layers change memory and compile time, never the params or the numbers."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.blocks.block_stack import stack_block_params, unstack_block_params
from marjax.models.mar import BLOCK_GROUPS, MAR, count_params, init_boxed_params, init_params
from marjax.sampling.masked import generate
from marjax.parallel.sharding import logical_axes
from tests.conftest import TINY

DEPTH2 = {**TINY, "encoder_depth": 2, "decoder_depth": 2}
B, L, TOKEN_DIM, MUL = 4, 16, 16, 2


@pytest.fixture(scope="module")
def params():
    """Unscanned params with every leaf perturbed: at init the DiffLoss output layer is zero, so the
    loss would not depend on the transformer at all."""
    params = jax.jit(lambda: init_params(MAR(**DEPTH2), jax.random.key(0)))()
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def loss_and_grads(model: MAR, params: dict, deterministic: bool) -> tuple[float, dict]:
    """The training loss and its gradients on fixed inputs and injected randomness (dropout included)."""
    keys = jax.random.split(jax.random.key(3), 5)
    tokens = jax.random.normal(keys[0], (B, L, TOKEN_DIM))
    mask = jax.random.uniform(keys[1], (B, L)) < 0.7
    t = jax.random.randint(keys[2], (B * L * MUL,), 0, 1000)
    noise = jax.random.normal(keys[3], (B * L * MUL, TOKEN_DIM))

    def loss(p):
        return model.apply({"params": p}, tokens, jnp.arange(B), mask, jnp.array([False, True, False, False]),
                           t, noise, L, deterministic=deterministic, rngs={"dropout": keys[4]})[0]

    return jax.jit(jax.value_and_grad(loss))(params)


def assert_close(actual: jax.Array, expected: jax.Array, what: str = "") -> None:
    """Every entry within 5e-6 of `expected`'s largest magnitude (observed <= 1.3e-6: XLA fuses
    the recomputed or scanned program differently)."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=5e-6 * float(jnp.max(jnp.abs(expected))), err_msg=what)


def assert_trees_close(actual: dict, expected: dict) -> None:
    """Same paths, every leaf `assert_close`."""
    actual, expected = flax.traverse_util.flatten_dict(actual), flax.traverse_util.flatten_dict(expected)
    assert actual.keys() == expected.keys()
    for path, value in expected.items():
        assert_close(actual[path], value, "/".join(path))


@pytest.fixture(scope="module")
def reference(params):
    """Loss and gradients of the unscanned model without remat, with dropout and without."""
    return {det: loss_and_grads(MAR(**DEPTH2), params, det) for det in (False, True)}


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_keeps_loss_and_gradients_under_dropout(params, reference, remat):
    loss, grads = loss_and_grads(MAR(**DEPTH2, remat=remat), params, deterministic=False)
    expected_loss, expected_grads = reference[False]
    assert float(jnp.max(jnp.abs(expected_grads["encoder_blocks_0"]["attn"]["qkv"]["kernel"]))) > 1e-4
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-6)
    assert_trees_close(grads, expected_grads)


@pytest.mark.parametrize("remat", ["none", "dots"])
def test_scanned_model_on_stacked_params_keeps_loss_and_gradients(params, reference, remat):
    loss, grads = loss_and_grads(MAR(**DEPTH2, remat=remat, scan_layers=True),
                                 stack_block_params(params, BLOCK_GROUPS), deterministic=True)
    expected_loss, expected_grads = reference[True]
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-6)
    assert_trees_close(unstack_block_params(grads, BLOCK_GROUPS), expected_grads)


def test_scanned_model_samples_the_same_images(params):
    kwargs = dict(num_iter=4, num_diffusion_steps=3, cfg=2.0)
    labels = jnp.array([1, 7])
    expected = generate(MAR(**DEPTH2), params, labels, jax.random.key(5), **kwargs)
    scanned = generate(MAR(**DEPTH2, scan_layers=True), stack_block_params(params, BLOCK_GROUPS), labels,
                       jax.random.key(5), **kwargs)
    assert float(jnp.std(expected)) > 1.0
    assert_close(scanned, expected)


def test_stacked_layout_has_a_leading_layer_axis_and_the_same_size():
    scanned = MAR(**DEPTH2, scan_layers=True)
    shapes = jax.eval_shape(lambda: init_params(scanned, jax.random.key(0)))
    stacked = jax.eval_shape(lambda: stack_block_params(init_params(MAR(**DEPTH2), jax.random.key(0)), BLOCK_GROUPS))
    assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, stacked)
    assert shapes["encoder_blocks"]["attn"]["qkv"]["kernel"].shape == (2, 32, 96)
    assert "encoder_blocks_0" not in shapes
    assert count_params(scanned) == count_params(MAR(**DEPTH2))
    names = logical_axes(lambda: init_boxed_params(scanned, jax.random.key(0)))
    assert tuple(names["decoder_blocks"]["mlp"]["fc1"]["kernel"]) == ("layers", "embed", "mlp")
    assert tuple(names["decoder_blocks"]["norm1"]["scale"]) == ("layers", "norm")


def test_stack_and_unstack_are_inverse():
    tree = {"encoder_blocks_0": {"w": jnp.zeros(3)}, "encoder_blocks_1": {"w": jnp.ones(3)}, "other": jnp.ones(2)}
    stacked = stack_block_params(tree, BLOCK_GROUPS)
    assert sorted(stacked) == ["encoder_blocks", "other"]
    np.testing.assert_array_equal(stacked["encoder_blocks"]["w"], [[0, 0, 0], [1, 1, 1]])
    unstacked = unstack_block_params(stacked, BLOCK_GROUPS)
    assert unstacked.keys() == tree.keys()
    np.testing.assert_array_equal(unstacked["encoder_blocks_1"]["w"], tree["encoder_blocks_1"]["w"])


def test_unknown_remat_policy_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"'everything'.*\['none', 'full', 'dots'\]"):
        jax.eval_shape(lambda: init_params(MAR(**TINY, remat="everything"), jax.random.key(0)))
