"""VAR's multi-scale VQ as a trainable config tokenizer: the dead-code remedy, code usage logging,
the image-size check, and a tokenizer run's workdir (with its code counts) loaded as VAR's tokenizer."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import digits_msvq
from marjax.checkpoints import RunCheckpoints
from marjax.errors import ConfigError
from marjax.parallel.sharding import make_mesh
from marjax.tasks.autoencoder_step import DeadCodes, TokenizerLoss, create_tokenizer_state, make_tokenizer_train_step
from marjax.tasks.registry import check_config, make_task
from marjax.tasks.tokenizer_from_config import make_tokenizer, tokenizer_spec
from marjax.tokenizers.discriminator import PatchDiscriminator
from marjax.tokenizers.msvq import dead_codes, revive_dead_codes
from marjax.tokenizers.msvq_vae import VQVAE, MSVQTokenizer

PATCH_NUMS = (1, 2, 4)
MODEL = VQVAE(ch=32, ch_mult=(1, 2), num_res_blocks=1, code_dim=4, codebook_size=32, patch_nums=PATCH_NUMS,
              image_channels=1)  # 8x8 images, 4x4 latents


def test_revive_dead_codes_takes_distinct_residuals_and_restarts_their_counts():
    ema = jnp.array([[5.0, 0.0, 0.0, 0.01], [9.0, 0.0, 1.0, 0.0]])  # 2 scales, 4 codes
    positions = jnp.array([4.0, 16.0])  # a uniform share: 20 / 4 = 5 hits a step; threshold 0.1 -> 0.5
    np.testing.assert_array_equal(dead_codes(ema, positions, 0.1), [False, True, False, True])
    codebook = jnp.full((4, 3), 7.0)
    residuals = jnp.arange(30.0).reshape(10, 3)
    new, new_ema, dead = revive_dead_codes(codebook, ema, residuals, positions, 0.1, jax.random.key(0))
    np.testing.assert_array_equal(new[jnp.array([0, 2])], codebook[jnp.array([0, 2])])
    rows = [int(r[0]) // 3 for r in np.asarray(new[jnp.array([1, 3])])]
    assert rows[0] != rows[1] and all(np.asarray(new[i]) in np.asarray(residuals) for i in (1, 3))
    np.testing.assert_allclose(new_ema[:, [1, 3]], [[0.1, 0.1], [0.4, 0.4]])  # threshold x B p_k^2 / V
    np.testing.assert_array_equal(new_ema[:, [0, 2]], ema[:, [0, 2]])
    assert not dead_codes(new_ema, positions, 0.1).any()


def tiny_state(tx, disc, images):
    """A fresh state of MODEL with 4 live codes of about the latents' size (the residuals of later
    scales are then what those scales will quantise again) and rows 4.. far from any latent: never hit."""
    state = jax.jit(functools.partial(create_tokenizer_state, MODEL, disc, tx, tx, images))(jax.random.key(0))
    codebook = state.params["model"]["quantizer"]["codebook"].at[:4].multiply(0.1).at[4:].set(50.0)
    params = {**state.params, "model": {**state.params["model"], "quantizer": {
        **state.params["model"]["quantizer"], "codebook": codebook}}}
    return state.replace(params=params, ema_params=params["model"])


def test_dead_codes_are_revived_and_then_hit():
    images = jax.random.uniform(jax.random.key(1), (8, 8, 8, 1), minval=-1, maxval=1)
    disc, tx = PatchDiscriminator(ndf=8, num_layers=1), optax.adam(1e-3)
    state = tiny_state(tx, disc, images)
    used = jax.jit(lambda p: MODEL.apply({"params": p}, images)[2]["hits"].sum(0) > 0)
    before = np.asarray(used(state.params["model"]))
    assert before[4:].sum() == 0

    step = jax.jit(make_tokenizer_train_step(MODEL, disc, tx, tx, TokenizerLoss(), dead=DeadCodes(2, 0.03)))
    # not a remedy step (step 0 of every 2): nothing changes but the counts
    after_quiet, metrics = step(state, {"images": images}, jax.random.key(2), None)
    assert int(metrics["revived"]) == 0 and int(metrics["dead_codes"]) >= 28
    assert np.all(np.asarray(after_quiet.params["model"]["quantizer"]["codebook"][4:]) == 50.0)

    new_state, metrics = step(after_quiet, {"images": images}, jax.random.key(3), None)  # step 1: the remedy
    revived = int(metrics["revived"])
    assert revived >= 28 and revived == int(metrics["dead_codes"])
    codebook = new_state.params["model"]["quantizer"]["codebook"]
    np.testing.assert_array_equal(new_state.ema_params["quantizer"]["codebook"][4:], codebook[4:])
    assert np.abs(np.asarray(codebook[4:])).max() < 50.0
    after = np.asarray(used(new_state.params["model"]))
    assert after[4:].sum() >= 20, after  # most revived codes are someone's nearest now
    # the revived codes' counts restart at the threshold: alive until the next check
    assert not np.asarray(dead_codes(new_state.code_hits, jnp.array([8.0 * p * p for p in PATCH_NUMS]), 0.03)).any()
    # usage and perplexity per scale, and overall, are logged as scalars
    for k in range(len(PATCH_NUMS)):
        assert 0 <= float(metrics[f"usage_s{k}"]) <= 1 and float(metrics[f"perplexity_s{k}"]) >= 1
    assert 0 < float(metrics["codebook_usage"]) <= 1 and float(metrics["perplexity"]) >= 1
    assert all(np.ndim(v) == 0 for v in metrics.values())


def tiny_config():
    config = digits_msvq.get_config()
    config.tokenizer.update(ch_mult=(1, 2), patch_nums=(1, 2, 4, 8), codebook_size=32, code_dim=4, disc_ndf=8,
                            disc_layers=1)
    return config


def test_image_size_must_match_the_last_scale():
    config = tiny_config()
    check_config(config)
    config.data.image_size = 32
    with pytest.raises(ConfigError, match=r"data.image_size=32: .*tokenizer.patch_nums\[-1\] x stride = 8 x 2 = 16"):
        check_config(config)
    config = tiny_config()
    config.tokenizer.kind, config.tokenizer.dead_code_every = "vq", 10
    with pytest.raises(ConfigError, match="dead_code_every=10: reviving dead codes is for tokenizer.kind='msvq'"):
        check_config(config)


def test_a_msvq_tokenizer_run_resumes_and_serves_as_vars_tokenizer(tmp_path):
    config = tiny_config()
    task = make_task(config, make_mesh(devices=jax.devices()[:1]))
    state = jax.jit(task.init)(jax.random.key(0))
    images = jax.random.uniform(jax.random.key(1), (4, 16, 16, 1), minval=-1, maxval=1)
    state, _ = jax.jit(task.step)(state, {"images": images}, jax.random.key(2), None)
    # VAR's counts after one forward: scale 0 copies its hits, the others keep 0.9 of zero
    np.testing.assert_allclose(state.code_hits.sum(1), [4, 0.1 * 16, 0.1 * 64, 0.1 * 256], rtol=1e-5)
    checkpoints = RunCheckpoints(str(tmp_path))
    checkpoints.save(1, state, None, config)
    checkpoints.wait()
    restored = checkpoints.restore(1, task.abstract_state, None)
    checkpoints.close()
    np.testing.assert_array_equal(restored.code_hits, state.code_hits)  # the counts resume with the run

    config.tokenizer.checkpoint = str(tmp_path)
    tokenizer = make_tokenizer(config)
    spec = tokenizer_spec(config)
    assert isinstance(tokenizer, MSVQTokenizer) and spec.discrete and spec.channels is None
    assert (spec.stride, spec.codebook_size, tokenizer.patch_nums) == (2, 32, (1, 2, 4, 8))
    codes = tokenizer.encode_codes(images)
    assert [c.shape for c in codes] == [(4, p, p) for p in (1, 2, 4, 8)] and all(c.dtype == jnp.int32 for c in codes)
    assert tokenizer.teacher_forcing_input(codes).shape == (4, 4 + 16 + 64, 4)
    model, params = tokenizer.model, state.ema_params
    np.testing.assert_allclose(tokenizer.decode_codes(codes), model.apply({"params": params}, codes,
                                                                         method=VQVAE.decode_codes), atol=1e-5)
    f_hat = model.apply({"params": params}, codes, method=lambda m, c: m.quantizer.latents_from_codes(c))
    np.testing.assert_allclose(tokenizer.decode(f_hat), tokenizer.decode_codes(codes), atol=1e-5)
    # codes -> images is the EMA autoencoder's own reconstruction, clamped
    recon = model.apply({"params": params}, images)[0]
    np.testing.assert_allclose(tokenizer.decode_codes(codes), jnp.clip(recon, -1, 1), atol=1e-5)
