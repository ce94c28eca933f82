"""The reference initialisation, and bf16 compute with fp32 params."""
import jax
import jax.numpy as jnp
import numpy as np

from marjax.models.mar import MAR, init_params
from marjax.tasks.mar_step import make_train_step
from marjax.tasks.recipe import learning_rate_schedule
from tests.conftest import TINY, mar_optimizer, mar_state

WIDE = dict(TINY, encoder_width=128, decoder_width=128, diffloss_width=128, num_classes=50)


def test_reference_initialisation():
    p = init_params(MAR(**WIDE), jax.random.key(0))
    for name in ("fake_latent", "mask_token", "encoder_pos_embed_learned", "decoder_pos_embed_learned",
                 "diffusion_pos_embed_learned"):
        assert abs(float(jnp.std(p[name])) - 0.02) < 0.004, name
    assert abs(float(jnp.std(p["class_emb"]["embedding"])) - 0.02) < 0.003
    qkv = p["encoder_blocks_0"]["attn"]["qkv"]
    bound = np.sqrt(6 / (128 + 384))  # xavier uniform on the (in, out) = (128, 384) kernel
    assert float(jnp.max(jnp.abs(qkv["kernel"]))) <= bound and float(jnp.max(jnp.abs(qkv["kernel"]))) > 0.9 * bound
    assert not jnp.any(qkv["bias"])
    ln = p["encoder_blocks_0"]["norm1"]
    assert jnp.all(ln["scale"] == 1) and not jnp.any(ln["bias"])
    mlp = p["diffloss"]
    for block in ("res_blocks_0", "final_layer"):
        assert not jnp.any(mlp[block]["adaLN_modulation"]["kernel"])
    assert not jnp.any(mlp["final_layer"]["linear"]["kernel"])
    for layer in ("mlp_0", "mlp_2"):
        assert abs(float(jnp.std(mlp["time_embed"][layer]["kernel"])) - 0.02) < 0.003
    assert float(jnp.std(mlp["res_blocks_0"]["mlp_0"]["kernel"])) > 0.05  # xavier, not 0.02


def test_bf16_compute_keeps_fp32_params_and_state():
    model = MAR(**TINY, dtype=jnp.bfloat16)
    schedule = learning_rate_schedule(1e-3, 1)
    tx = mar_optimizer(schedule)
    state = mar_state(model, tx, jax.random.key(0))
    batch = {"latents": jax.random.normal(jax.random.key(1), (4, 8, 8, 4)), "labels": jnp.arange(4)}
    state, metrics = jax.jit(make_train_step(model, tx, schedule))(state, batch, jax.random.key(2))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((state.params, state.ema_params)))
    assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
    # The bf16 forward stays close to the fp32 one on the same params.
    tokens = jax.random.normal(jax.random.key(3), (2, 16, 16))
    mask = jnp.arange(16)[None, :].repeat(2, 0) < 12
    args = (tokens, mask, jnp.array([1, 2]), jnp.zeros(2, bool), 4)
    z16 = model.apply({"params": state.params}, *args, method=MAR.condition)
    z32 = MAR(**TINY).apply({"params": state.params}, *args, method=MAR.condition)
    # Matmuls run in bf16; the residual stream stays fp32 (the fp32 position embeddings promote it).
    assert not np.array_equal(np.asarray(z16, np.float32), z32)
    np.testing.assert_allclose(np.asarray(z16, np.float32), z32, atol=0.1 * float(jnp.abs(z32).max()))
