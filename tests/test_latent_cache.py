"""Latent caching: shards per process, the cache equals direct encoding, flips, and the error paths."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from marjax.data.image_ops import to_model_range
from marjax.data.pipeline import make_dataset
from marjax.data.image_folder import ImageFolderSource
from marjax.errors import DataError
from marjax.data.latent_cache import CachedLatentSource, write_latent_cache
from marjax.tokenizers.kl import AutoencoderKL
from marjax.tokenizers.kl import KLTokenizer
from tests.vae_reference import TINY_VAE, load_reference, reference_params

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
