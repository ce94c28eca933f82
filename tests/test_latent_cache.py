"""Latent caching: shards per process, the cache equals direct encoding, flips, the spread of the
latents, the recorded label count, the command, and the error paths."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import digits_latent

from marjax.data.image_ops import to_model_range
from marjax.data.pipeline import make_dataset
from marjax.data.image_folder import ImageFolderSource
from marjax.data.sources import make_source
from marjax.errors import DataError
from marjax.data.latent_cache import CachedLatentSource, latent_statistics, scale_advice, write_latent_cache
from marjax.data.token_cache import write_labels_info
from marjax.tokenizers.kl import AutoencoderKL
from marjax.tokenizers.kl import KLTokenizer
from tests.random_tokenizers import write_random_tokenizer
from tests.vae_reference import TINY_VAE, load_reference, reference_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

@pytest.fixture(scope="module")
def vae_params():
    return reference_params(load_reference())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(5):
        os.makedirs(root / f"class_{i % 2}", exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"class_{i % 2}" / f"{i}.png")
    return ImageFolderSource(str(root), 16, num_classes=2)


def moments_fn(params):
    """The KL tokenizer's posterior moments of a batch, as `python -m marjax.cache_tokens` writes them."""
    return KLTokenizer(TINY_VAE, params, scale=1.0).moments


def moments_of(params, image):
    x = jnp.asarray(to_model_range(image))[None]
    return np.asarray(TINY_VAE.apply({"params": params}, x, method=AutoencoderKL.moments))[0]


def test_two_process_cache_holds_every_record_and_its_flip(tmp_path, folder, vae_params):
    out = str(tmp_path / "cache")
    for process in range(2):
        write_latent_cache(folder, moments_fn(vae_params), out, batch_size=2, process_index=process, process_count=2)
    cache = CachedLatentSource(out)
    assert len(cache) == 5
    for position, index in enumerate([0, 2, 4, 1, 3]):  # shard 0 then shard 1, each in source order
        record, source = cache[position], folder[index]
        assert int(record["label"]) == int(source["label"])
        np.testing.assert_allclose(record["moments"], moments_of(vae_params, source["image"]), atol=1e-5)
        np.testing.assert_allclose(record["moments_flip"], moments_of(vae_params, source["image"][:, ::-1]),
                                   atol=1e-5)


def test_cached_posterior_samples_equal_encoding_on_the_fly(tmp_path, folder, vae_params):
    out = str(tmp_path / "cache")
    write_latent_cache(folder, moments_fn(vae_params), out, batch_size=4)
    tokenizer = KLTokenizer(TINY_VAE, vae_params, scale=0.2325)
    cache = CachedLatentSource(out)
    moments = jnp.stack([cache[i]["moments"] for i in range(5)])
    images = jnp.stack([to_model_range(folder[i]["image"]) for i in range(5)])
    for seed in range(3):
        key = jax.random.key(seed)
        np.testing.assert_allclose(tokenizer.latents_from_moments(moments, key), tokenizer.encode(images, key),
                                   atol=1e-5)


def test_pipeline_picks_the_record_or_its_flip(tmp_path, folder, vae_params):
    out = str(tmp_path / "cache")
    write_latent_cache(folder, moments_fn(vae_params), out, batch_size=5)
    cache = CachedLatentSource(out)
    plain = [cache[i]["moments"] for i in range(5)]
    flipped = [cache[i]["moments_flip"] for i in range(5)]
    iterator = iter(make_dataset(cache, global_batch_size=5, seed=0, random_flip=True))
    picks = []
    for _ in range(8):
        batch = next(iterator)
        assert set(batch) == {"moments", "labels"} and batch["moments"].shape == (5, 8, 8, 8)
        for row in batch["moments"]:
            matches = [("plain", i) for i in range(5) if np.array_equal(row, plain[i])]
            matches += [("flip", i) for i in range(5) if np.array_equal(row, flipped[i])]
            assert len(matches) == 1
            picks.append(matches[0][0])
    assert 10 < picks.count("flip") < 30


def test_missing_or_incomplete_cache_is_named(tmp_path, folder, vae_params):
    with pytest.raises(DataError, match="holds no latent cache shards"):
        CachedLatentSource(str(tmp_path))
    write_latent_cache(folder, moments_fn(vae_params), str(tmp_path / "part"), batch_size=4, process_index=0,
                       process_count=2)
    with pytest.raises(DataError, match="incomplete latent cache"):
        CachedLatentSource(str(tmp_path / "part"))


def test_latent_statistics_measure_the_posterior_spread(tmp_path, folder, vae_params):
    path = write_latent_cache(folder, moments_fn(vae_params), str(tmp_path / "cache"), batch_size=4)
    moments = np.stack([CachedLatentSource(str(tmp_path / "cache"))[i]["moments"] for i in range(5)])
    mean, logvar = np.split(moments.astype(np.float64), 2, axis=-1)
    stats = latent_statistics(path)
    assert stats["records"] == 5
    np.testing.assert_allclose(stats["std"], np.sqrt(mean.var() + np.exp(logvar).mean()), rtol=1e-6)
    np.testing.assert_allclose(stats["max_abs_mean"], np.abs(mean).max(), rtol=1e-6)
    assert latent_statistics(path, max_records=2)["records"] == 2  # the first and the last record


def test_scale_advice_fits_std_one_and_clips_above_the_largest_latent():
    advice = scale_advice({"records": 100, "std": 4.0, "max_abs_mean": 14.2}, scale=0.2325)
    assert "std 0.93" in advice  # what the config's scale gives
    assert "--config.tokenizer.scale=0.25," in advice
    assert "--config.sample.clip_range=5" in advice  # 14.2 / 4 = 3.55 -> 4, plus 1


def test_a_cache_written_with_other_labels_stops_the_run(tmp_path, folder, vae_params):
    out = str(tmp_path / "cache")
    write_latent_cache(folder, moments_fn(vae_params), out, batch_size=4)
    assert len(CachedLatentSource(out, num_classes=10)) == 5  # no labels.json (an older cache): not checked
    write_labels_info(out, 0)
    with pytest.raises(DataError, match="written without labels .data.num_classes=0., but data.num_classes=10"):
        CachedLatentSource(out, num_classes=10)
    write_labels_info(out, 2)
    with pytest.raises(DataError, match="holds labels of 2 classes, but data.num_classes=10; set "
                                        "--config.data.num_classes=2"):
        CachedLatentSource(out, num_classes=10)
    assert len(CachedLatentSource(out, num_classes=2)) == len(CachedLatentSource(out)) == 5


def test_the_cache_command_records_the_labels_and_prints_the_scale_to_use(tmp_path):
    """`python -m marjax.cache_tokens` on the digits without labels: a complete shard, labels.json,
    and the advice line; a labelled run on that cache then stops before training."""
    config = digits_latent.get_config()
    write_random_tokenizer(config, str(tmp_path / "vae"))
    out = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, "-m", "marjax.cache_tokens", "--config=configs/digits_latent.py", f"--output={out}",
         f"--config.tokenizer.checkpoint={tmp_path / 'vae'}", "--config.data.num_classes=0", "--config.sample.cfg=1.0",
         "--batch_size=256"],
        cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "latents of 1797 records: std " in result.stdout
    assert "MAR expects std 1: --config.tokenizer.scale=" in result.stdout
    assert json.loads((out / "labels.json").read_text()) == {"num_classes": 0}
    config.data.update(source="cached_latents", path=str(out), num_classes=0)
    assert len(make_source(config.data)) == 1797
    config.data.num_classes = 10
    with pytest.raises(DataError, match="written without labels"):
        make_source(config.data)
