"""Code caching: LlamaGen's augmentations (the flip, torchvision's ten-crop order), shards per process,
cached codes equal encoding on the fly in every discrete family's batches, and the error paths."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import gpt_digits, var_digits
from marjax.data.code_cache import CachedCodeSource, augmentations, write_code_cache
from marjax.data.digits import DigitsSource
from marjax.data.image_ops import to_model_range
from marjax.data.pipeline import make_dataset
from marjax.errors import ConfigError, DataError
from marjax.parallel.sharding import make_mesh
from marjax.tasks.registry import check_config, make_task
from marjax.tasks.token_batches import flat_codes
from marjax.tasks.tokenizer_from_config import make_tokenizer
from tests.random_tokenizers import write_random_tokenizer

RECORDS = [DigitsSource(8)[i] for i in range(5)]


def test_ten_crop_is_torchvisions_order():
    """Corners top-left, top-right, bottom-left, bottom-right, center, then those of the mirror."""
    image = np.arange(11 * 11).reshape(1, 11, 11, 1)
    views = augmentations(image, 10, ten_crop=True)
    assert len(views) == 10 and all(v.shape == (1, 10, 10, 1) for v in views)
    corners = [(0, 0), (0, 1), (1, 0), (1, 1), (0, 0)]  # the center offset int(round(0.5)) = 0, as torchvision
    mirror = image[:, :, ::-1]
    for i, (top, left) in enumerate(corners):
        np.testing.assert_array_equal(views[i], image[:, top:top + 10, left:left + 10])
        np.testing.assert_array_equal(views[5 + i], mirror[:, top:top + 10, left:left + 10])
    plain = augmentations(image[:, :10, :10], 10, ten_crop=False)
    np.testing.assert_array_equal(plain[1], image[:, :10, 9::-1])


@pytest.fixture(scope="module", params=["gpt", "var"])
def family(request, tmp_path_factory):
    """(config with a random tokenizer on 8x8 digits, its tokenizer, a two-process code cache of RECORDS)."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "gpt":
        config = gpt_digits.get_config()
        config.tokenizer.update(ch=32, ch_mult=(1, 2), z_channels=32, codebook_size=16, code_dim=4)
    else:
        config = var_digits.get_config()
        config.tokenizer.update(ch=32, ch_mult=(1, 2), codebook_size=16, code_dim=4, patch_nums=(1, 2, 4))
    config.data.image_size = 8
    config.model.update(width=32, depth=2, num_heads=2)
    write_random_tokenizer(config, str(folder / "tokenizer"))
    tokenizer = make_tokenizer(config)
    cache = str(folder / "cache")
    for process in range(2):
        write_code_cache(RECORDS, lambda x: flat_codes(tokenizer.encode_codes(x)), cache, batch_size=2, image_size=8,
                         process_index=process, process_count=2)
    config.data.update(source="cached_codes", path=cache)
    return config, tokenizer, CachedCodeSource(cache)


def encoded(tokenizer, images: np.ndarray) -> np.ndarray:
    return np.asarray(flat_codes(tokenizer.encode_codes(jnp.asarray(to_model_range(images)))))


def test_two_process_cache_holds_every_image_and_its_flip(family):
    _, tokenizer, cache = family
    assert len(cache) == 5
    for position, index in enumerate([0, 2, 4, 1, 3]):  # shard 0 then shard 1, each in source order
        record, image = cache[position], RECORDS[index]["image"]
        assert int(record["label"]) == int(RECORDS[index]["label"]) and record["codes"].dtype == np.int32
        np.testing.assert_array_equal(record["codes"], encoded(tokenizer, np.stack([image, image[:, ::-1]])))


def test_a_batch_of_cached_codes_equals_the_batch_encoded_on_the_fly(family):
    """The task's training batch from the cache (first views, no flips) and from the same records' images."""
    config, _, cache = family
    check_config(config)
    task = make_task(config, make_mesh(devices=jax.devices()[:1]), num_records=len(cache))
    batch = next(iter(make_dataset(cache, global_batch_size=4, seed=0, random_flip=False)))
    labels = jnp.asarray(batch["labels"])
    from_cache = task.prepare_batch({"codes": jnp.asarray(batch["codes"]), "labels": labels}, jax.random.key(0))
    # The shuffled batch holds four records' first views: which ones, found by their codes.
    shard_order = [0, 2, 4, 1, 3]
    records = [shard_order[next(i for i in range(5) if np.array_equal(cache[i]["codes"][0], row))]
               for row in batch["codes"]]
    images = np.stack([to_model_range(RECORDS[i]["image"]) for i in records])
    on_the_fly = task.prepare_batch({"images": jnp.asarray(images), "labels": labels}, jax.random.key(0))
    assert sorted(from_cache) == sorted(on_the_fly)
    for key in from_cache:
        np.testing.assert_array_equal(np.asarray(from_cache[key]), np.asarray(on_the_fly[key]), err_msg=key)


def test_flips_draw_every_view(family):
    _, _, cache = family
    dataset = iter(make_dataset(cache, global_batch_size=5, seed=0, random_flip=True))
    seen = {tuple(row) for _ in range(8) for row in np.asarray(next(dataset)["codes"])}
    views = {tuple(cache[i]["codes"][a]) for i in range(5) for a in range(2)}
    assert seen <= views and len(seen) > 5


def test_a_cache_of_another_grid_or_kind_is_refused(family, tmp_path):
    config, _, _ = family
    task = make_task(config, make_mesh(devices=jax.devices()[:1]))
    with pytest.raises(DataError, match="holds 3 codes per image"):
        task.prepare_batch({"codes": jnp.zeros((2, 3), jnp.int32), "labels": jnp.zeros((2,), jnp.int32)},
                           jax.random.key(0))
    with pytest.raises(DataError, match="holds no code cache shards"):
        CachedCodeSource(str(tmp_path))
    latents = config.copy_and_resolve_references()
    latents.data.source = "cached_latents"
    with pytest.raises(ConfigError, match="holds KL posteriors"):
        check_config(latents)
