"""The tokenizer train step: loss pieces, and reconstruction falling while training on the digits."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from marjax.config.loading import load_config_file
from marjax.data.digits import DigitsSource
from marjax.errors import ConfigError
from marjax.tasks.autoencoder_step import (TokenizerLoss, adaptive_weight, create_tokenizer_state, hinge_d_loss,
                                           make_tokenizer_train_step)
from marjax.tasks.registry import check_config, restore_generator
from marjax.tasks.tokenizer_from_config import make_tokenizer
from marjax.tokenizers.discriminator import PatchDiscriminator
from marjax.tokenizers.kl import AutoencoderKL, KLTokenizer
from marjax.tokenizers.msvq_vae import VQVAE
from marjax.tokenizers.vq import VQModel


def test_hinge_loss_and_adaptive_weight():
    real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.0])
    np.testing.assert_allclose(hinge_d_loss(real, fake), 0.5 * ((0 + 0.5) / 2 + (0 + 1.0) / 2))
    np.testing.assert_allclose(adaptive_weight(jnp.array([3.0, 0.0]), jnp.array([0.0, 4.0]), 0.5),
                               0.5 * 3.0 / (4.0 + 1e-4), rtol=1e-6)
    np.testing.assert_allclose(adaptive_weight(jnp.ones(2), jnp.zeros(2), 1.0), 1e4)


def digits_batch(n=16):
    source = DigitsSource(image_size=16)
    return {"images": jnp.asarray(np.stack([source[i]["image"] for i in range(n)]), jnp.float32) / 127.5 - 1.0}


@pytest.mark.parametrize("kind", ["kl", "vq", "msvq"])
def test_reconstruction_falls_while_training_on_digits(kind):
    backbone = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_channels=1, resolution=16)
    model = {"kl": lambda: AutoencoderKL(embed_dim=4, **backbone),
             "vq": lambda: VQModel(z_channels=32, codebook_size=64, code_dim=4, **backbone),
             "msvq": lambda: VQVAE(ch=32, ch_mult=(1, 2), num_res_blocks=1, codebook_size=64, code_dim=4,
                                   patch_nums=(1, 2, 4, 8), image_channels=1)}[kind]()
    disc = PatchDiscriminator(ndf=16, num_layers=2)
    tx, disc_tx = optax.adam(2e-3, 0.5, 0.9), optax.adam(2e-3, 0.5, 0.9)
    batch = digits_batch()
    state = jax.jit(functools.partial(create_tokenizer_state, model, disc, tx, disc_tx, batch["images"]))(
        jax.random.key(0))
    traces = []

    def counted(*args):
        traces.append(1)
        return make_tokenizer_train_step(model, disc, tx, disc_tx, TokenizerLoss(disc_start=20))(*args)

    step = jax.jit(counted)
    history = []
    for _ in range(30):
        state, metrics = step(state, batch, jax.random.key(1))
        history.append(jax.device_get(metrics))
    assert len(traces) == 1
    first, last = history[0]["rec_loss"], np.mean([h["rec_loss"] for h in history[-5:]])
    assert last < 0.6 * first, (first, last)
    assert all(h["d_loss"] == 0.0 for h in history[:20]) and all(h["d_loss"] > 0.0 for h in history[20:])
    assert all(h["d_weight"] == 0.0 for h in history[:20])  # not computed before disc_start
    assert all(np.isfinite(h["d_weight"]) and h["d_weight"] > 0 for h in history[20:])
    if kind == "kl":
        assert history[-1]["kl"] > 0
    else:
        assert 0 < history[-1]["codebook_usage"] <= 1 and history[-1]["perplexity"] >= 1
    if kind == "msvq":
        assert all(0 < history[-1][f"usage_s{k}"] <= 1 for k in range(4)) and history[-1]["vq_loss"] > 0


def test_tokenizer_training_through_the_cli_checkpoints_and_resumes(tmp_path):
    import subprocess
    import sys

    import torch

    from tests.test_lpips import tiny_lpips_state
    from tests.test_main_program import REPO, env, losses, saved_steps, scalars

    lpips_files = [str(tmp_path / "vgg16-397923af.pth"), str(tmp_path / "vgg.pth")]
    for path, state in zip(lpips_files, tiny_lpips_state()):
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    base = [sys.executable, "-m", "marjax.main", "--config=configs/digits_vae.py", f"--workdir={tmp_path}",
            "--config.tokenizer.ch_mult=(1,)", "--config.tokenizer.disc_start=2", "--config.train.log_every_steps=1",
            "--config.train.checkpoint_every_steps=2", "--config.train.global_batch_size=16",
            "--config.train.num_grid_samples=4", "--config.tokenizer.perceptual_weight=1.0",
            f"--config.tokenizer.lpips_vgg16={lpips_files[0]}", f"--config.tokenizer.lpips_lin={lpips_files[1]}"]
    for steps in (2, 4):
        result = subprocess.run(base + [f"--config.train.num_steps={steps}"], cwd=REPO, env=env(),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    assert saved_steps(str(tmp_path)) == [2, 4]
    assert sorted(losses(str(tmp_path))) == [1, 2, 3, 4]
    assert min(scalars(str(tmp_path), "p_loss").values()) > 0  # the LPIPS term, from the user's files
    assert "resumed from the checkpoint at step 2" in result.stderr
    assert os.path.exists(tmp_path / "samples" / "train_step_4_ema.png")
    run_config = load_config_file(os.path.join(REPO, "configs", "digits_vae.py"))
    run_config.tokenizer.ch_mult = (1,)
    with pytest.raises(ConfigError, match="task='tokenizer' does not generate"):  # what --mode=sample meets
        restore_generator(run_config, str(tmp_path))
    # The run's EMA weights serve as the KL tokenizer of configs/digits_latent.py.
    config = load_config_file(os.path.join(REPO, "configs", "digits_latent.py"))
    config.tokenizer.ch_mult = (1,)
    config.tokenizer.checkpoint = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="missing'?: no such directory"):
        check_config(config)
    config.tokenizer.checkpoint = str(tmp_path)
    check_config(config)
    tokenizer = make_tokenizer(config)
    assert isinstance(tokenizer, KLTokenizer)
    latents = tokenizer.encode(digits_batch(4)["images"], jax.random.key(0))
    assert latents.shape == (4, 16, 16, 4)
    assert tokenizer.decode(latents).shape == (4, 16, 16, 1)


def test_a_tokenizer_run_refuses_periodic_sample_scores(tmp_path):
    from marjax.train import train_and_evaluate

    config = load_config_file(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "digits_vae.py"))
    config.tokenizer.ch_mult = (1,)
    config.train.eval_every_steps = 10
    with pytest.raises(ConfigError, match="train.eval_every_steps scores generated samples; task='tokenizer'"):
        train_and_evaluate(config, str(tmp_path))
