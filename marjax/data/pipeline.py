"""The grain input pipeline: this process's shard, shuffled, flipped, batched; global arrays.

Each process reads records `process_index::process_count` of the source and yields its slice
of every global batch; `global_batch` assembles the slices into one array sharded over the
mesh's batch axes. The iterator is a grain `DatasetIterator`, whose state is checkpointed
with the model so a resumed run sees the same next batch.
"""
import os
import threading
import time
from collections.abc import Sequence

import grain
import jax
import numpy as np

from marjax.data.image_ops import to_model_range
from marjax.errors import DataError


def _flip(record: dict, rng: np.random.Generator) -> dict:
    """With probability 1/2: mirror the image (H, W, C), or take the cached flip's posterior; or one
    of a code cache's augmentations, uniformly."""
    if "codes" in record:
        return {**record, "codes": record["codes"][rng.integers(len(record["codes"]))][None]}
    if rng.random() < 0.5:
        if "moments" in record:
            return {**record, "moments": record["moments_flip"]}
        return {**record, "image": record["image"][:, ::-1]}
    return record


def _to_model_inputs(record: dict) -> dict:
    """Images -> "images" in [-1, 1]; cached latents -> their posterior "moments"; cached codes -> the
    "codes" (L,) of the first augmentation left (`_flip` draws one); and "labels"."""
    if "codes" in record:
        return {"codes": np.asarray(record["codes"][0], np.int32), "labels": np.int32(record["label"])}
    if "moments" in record:
        return {"moments": np.asarray(record["moments"], np.float32), "labels": np.int32(record["label"])}
    return {"images": to_model_range(record["image"]), "labels": np.int32(record["label"])}


def make_dataset(source: Sequence[dict], *, global_batch_size: int, seed: int, random_flip: bool,
                 process_index: int | None = None, process_count: int | None = None,
                 worker_count: int = 0, prefetch_buffer_size: int = 2) -> grain.IterDataset:
    """An endless dataset of this process's batches.

    Each element: {"images": (local_batch, H, W, C) float32 in [-1, 1] (or, from a latent cache,
    "moments": (local_batch, h, w, 2c); from a code cache, "codes": (local_batch, L) int32),
    "labels": (local_batch,) int32}, local_batch =
    global_batch_size / process_count. Epochs are reshuffled with a seed
    derived from `seed`; flips are drawn per record and epoch, so they too are reproducible.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise DataError(f"train.global_batch_size={global_batch_size} is not divisible by the "
                        f"{process_count} processes")
    local_batch = global_batch_size // process_count
    dataset = grain.MapDataset.source(source).slice(slice(process_index, None, process_count))
    if len(dataset) < local_batch:
        raise DataError(f"each process needs at least one batch of {local_batch} records, but its shard "
                        f"of the {len(source)}-record source has {len(dataset)}")
    dataset = dataset.shuffle(seed=seed).repeat(None)
    if random_flip:
        dataset = dataset.random_map(_flip, seed=seed + 1)
    dataset = dataset.map(_to_model_inputs).batch(local_batch, drop_remainder=True).to_iter_dataset(
        grain.ReadOptions(num_threads=max(worker_count, 1), prefetch_buffer_size=prefetch_buffer_size))
    if worker_count:
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count),
                                      worker_init_fn=_exit_with_parent)
    return dataset


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
    """Runs in each grain worker: exits it when the training process is gone, even after a
    kill -9 (which no cleanup code sees), instead of leaving a worker holding memory."""
    del worker_index, worker_count
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:  # the parent's death reparents this process
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def global_batch(local: dict, sharding: jax.sharding.Sharding) -> dict:
    """This process's numpy slice of a batch -> global jax arrays sharded along the batch axis."""
    return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in local.items()}
