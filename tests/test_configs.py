"""The config files, override checking and validation."""
import os
import types

import ml_collections
import pytest

from marjax.config.checks import check_batch_split
from marjax.config.defaults import IMAGENET_TRAIN_IMAGES, base_config
from marjax.config.loading import check_overrides, config_keys, load_config_file
from marjax.errors import ConfigError
from marjax.models.mar import PRESETS, count_params
from marjax.tasks.mar import model_from_config
from marjax.tasks.recipe import step_plan
from marjax.tasks.registry import check_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load(name: str) -> ml_collections.ConfigDict:
    return load_config_file(os.path.join(CONFIGS, name))


@pytest.mark.parametrize("name", ["digits.py", "mar_base.py", "mar_large.py", "mar_huge.py"])
def test_every_config_has_the_base_keys(name):
    assert config_keys(load(name)) == config_keys(base_config())


@pytest.mark.parametrize("name, preset, cfg, params", [
    ("mar_base.py", "mar_base", 2.9, 207_924_768), ("mar_large.py", "mar_large", 3.0, 478_326_304),
    ("mar_huge.py", "mar_huge", 3.2, 942_403_104)])
def test_imagenet_configs_follow_the_published_recipe(name, preset, cfg, params):
    config = load(name)
    assert {k: config.model[k] for k in PRESETS[preset]} == PRESETS[preset]
    assert count_params(model_from_config(config)) == params
    plan = step_plan(config, IMAGENET_TRAIN_IMAGES)
    assert plan.peak_lr == pytest.approx(8e-4)
    assert plan.steps_per_epoch == 625 and plan.warmup_steps == 62_500 and plan.total_steps == 500_000
    t = config.train
    assert (t.b1, t.b2, t.weight_decay, t.grad_clip, t.ema_rate) == (0.9, 0.95, 0.02, 3.0, 0.9999)
    assert (t.label_drop_prob, t.diffusion_batch_mul, t.mask_ratio_min, t.lr_schedule) == (0.1, 4, 0.7, "constant")
    assert (config.model.attn_dropout, config.model.proj_dropout) == (0.1, 0.1)
    assert (config.sample.num_iter, config.sample.cfg, config.sample.cfg_schedule) == (256, cfg, "linear")
    assert (config.tokenizer.kind, config.tokenizer.scale, config.data.image_size) == ("kl", 0.2325, 256)
    assert (config.tokenizer.ch, config.tokenizer.ch_mult, config.tokenizer.embed_dim) == (128, (1, 1, 2, 2, 4), 16)


def test_digits_config_validates_and_derives_the_token_grid():
    config = load("digits.py")
    check_config(config)
    model = model_from_config(config)
    assert (model.seq_len, model.token_dim, model.num_classes) == (16, 4, 10)


def test_unknown_override_lists_valid_keys_with_a_suggestion():
    with pytest.raises(ConfigError) as info:
        check_overrides(base_config(), ["--workdir=x", "--config.train.base_lr=1", "--config.model.widht=3"])
    message = str(info.value)
    assert "unknown config key 'model.widht'" in message and "did you mean" in message
    assert "train.base_lr" in message.split("valid keys:")[1]
    assert "'train.base_lr'" not in message.split("valid keys:")[0]


@pytest.mark.parametrize("override, message", [
    (("data", "image_size", 9), "not divisible by the tokenizer stride"),
    (("model", "dtype", "float16"), "model.dtype"),
    (("model", "remat", "all"), r"model.remat='all'; choose one of \['none', 'full', 'dots'\]"),
    (("data", "source", "webdataset"), "data.source"),
    (("sample", "classes", "3,12"), "class ids in \\[0, 10\\)"),
    (("model", "encoder_heads", 3), "encoder_width=128 is not divisible"),
    (("tokenizer", "kind", "kl"), "needs its weights: pass --config.tokenizer.checkpoint"),
    (("tokenizer", "kind", "vq"), "MAR's DiffLoss head needs continuous tokens"),
    (("tokenizer", "kind", "vae"), r"tokenizer.kind='vae'; choose one of \['pixels', 'kl', 'vq', 'msvq'\]"),
    (("train", "log_every_steps", 0), "train.log_every_steps"),
    (("train", "mask_buckets", 6), r"train.mask_buckets must be in \[1, 5\] for 16 tokens"),
    (("train", "num_steps", 0), "train.num_steps must be >= 1"),
    (("train", "num_epochs", -1.0), "train.num_epochs must be > 0"),
    (("train", "diffusion_batch_mul", 0), "train.diffusion_batch_mul must be >= 1"),
    (("train", "mask_ratio_min", 0.0), r"train.mask_ratio_min=0.0: the smallest masked fraction lies in \(0, 1\]"),
    (("train", "mask_ratio_min", 1.5), r"train.mask_ratio_min=1.5"),
    (("data", "image_size", 0), "data.image_size must be >= 1"),
    (("data", "channels", 4), "data.channels=4: images have 1 .* or 3"),
    (("model", "patch_size", 0), "model.patch_size must be >= 1"),
    (("sample", "num_iter", 0), "sample.num_iter must be >= 1"),
    (("sample", "num_diffusion_steps", "-1"), "sample.num_diffusion_steps='-1'.*not a positive step count"),
    (("sample", "num_diffusion_steps", "ddim999"), "sample.num_diffusion_steps='ddim999'.*no integer stride"),
    (("sample", "classes", "cat"), r"sample.classes='cat' must list class ids in \[0, 10\)"),
    (("sample", "seed", -1), "sample.seed must be >= 0"),
    (("sample", "clip_range", 0.0), "sample.clip_range=0.0: the x_0 predictions' bound must be > 0"),
])
def test_validate_rejects(override, message):
    config = load("digits.py")
    section, field, value = override
    config[section][field] = value
    with pytest.raises(ConfigError, match=message):
        check_config(config)


@pytest.mark.parametrize("name, temperature", [("folder.py", 0.8), ("folder_latent.py", 0.7), ("folder_vae.py", None)])
def test_the_folder_configs_keep_the_short_run_fixes(name, temperature, tmp_path):
    """The MAR runs: an EMA warm-up (else the EMA grids are noise for thousands of steps) and a
    temperature below 1. Unconditional by default, so any folder runs; each checks as it is, the
    latent path's MAR once it is given the autoencoder run."""
    config = load(name)
    if config.tokenizer.kind == "kl" and config.task == "mar":
        with pytest.raises(ConfigError, match="needs its weights: pass --config.tokenizer.checkpoint"):
            check_config(config)
        config.tokenizer.checkpoint = str(tmp_path)
    check_config(config)
    assert config.data.num_classes == 0 and config.data.image_size == 28
    assert config_keys(config) == config_keys(base_config())
    if temperature is not None:
        assert config.train.ema_warmup and config.sample.temperature == temperature


def test_the_folder_latent_path_has_the_folder_models_tokens():
    """The latent path's MAR sees 7x7 tokens of 16 values, as the pixel path's does, each 4x4 pixels."""
    pixels, latents = load("folder.py"), load("folder_latent.py")
    stride = 2 ** (len(latents.tokenizer.ch_mult) - 1)
    assert latents.tokenizer.to_dict() == {**load("folder_vae.py").tokenizer.to_dict(), "scale": 0.3262}
    assert latents.model.patch_size * stride == pixels.model.patch_size == 4
    assert latents.model.patch_size ** 2 * latents.tokenizer.embed_dim == pixels.model.patch_size ** 2


@pytest.mark.parametrize("name", ["digits.py", "ar_digits.py", "gpt_digits.py"])
def test_the_host_top_k_is_vars_alone(name):
    """sample.host_top_k serves VAR's sampler; the other families refuse it rather than ignore it."""
    config = load(name)
    config.sample.host_top_k = True
    with pytest.raises(ConfigError, match="sample.host_top_k=True has no effect on task="):
        check_config(config, weights=False)


@pytest.mark.parametrize("name, clip_range", [("digits_latent.py", 5.0), ("folder_latent.py", 6.0)])
def test_the_short_latent_runs_clip_x0_to_their_latents_range(name, clip_range):
    """Unclipped, a briefly trained latent MAR's samples run away (tests/test_diffusion.py); the
    scaled latents reach about 3.5 (digits) and 4.7 (the 28x28 digit folder)."""
    sample = load(name).sample
    assert sample.clip_denoised and sample.clip_range == clip_range


@pytest.mark.parametrize("override, message", [
    ("--config.tokenizer.name=kl16", "config key 'tokenizer.name' was replaced by tokenizer.kind"),
    ("--config.vae.kind=vq", "config key 'vae.kind' was replaced by the tokenizer section"),
])
def test_old_spellings_name_their_replacement(override, message):
    with pytest.raises(ConfigError, match=message):
        check_overrides(base_config(), [override])


def test_unknown_task_lists_the_registered_ones():
    config = load("digits.py")
    config.task = "maskgit"
    with pytest.raises(ConfigError, match=r"task='maskgit'; choose one of \['ar', 'gpt', 'mar', 'tokenizer'"):
        check_config(config)


def test_a_misspelt_config_argument_is_refused_not_ignored():
    with pytest.raises(ConfigError, match="digits.py:runlokal: unknown config argument 'runlokal': "
                                          "this config takes 'runlocal'"):
        load_config_file(os.path.join(CONFIGS, "digits.py:runlokal"))
    with pytest.raises(ConfigError, match="this config takes no argument"):
        load_config_file(os.path.join(CONFIGS, "mar_base.py:runlocal"))
    assert load_config_file(os.path.join(CONFIGS, "digits.py:runlocal")).train.num_steps == 8


def test_the_batch_must_split_over_the_mesh_before_anything_loads():
    config = load("digits.py")
    config.train.global_batch_size = 63
    with pytest.raises(ConfigError, match="global_batch_size=63 is not divisible by the mesh's 2 batch shards"):
        check_batch_split(config, types.SimpleNamespace(shape={"data": 2, "fsdp": 1, "tensor": 4}))
