"""What the latent and code caches share: one ArrayRecord shard per process, records written in
batches and read back by index, a shard visible only once complete.

`latent_cache` stores KL posteriors (MAR, the DiffLoss AR), `code_cache` VQ codes (VQ-GPT, VAR,
the softmax heads). Each process encodes the records `process_index::process_count` of the source
into `<prefix>-<index>-of-<count>.array_record`; a reader needs all `count` shards.

`labels.json` beside the shards records the `data.num_classes` the cache was written with (0: its
labels are all 0), so that a run asking for another count stops instead of training on wrong labels.
"""
import glob
import json
import os
from collections.abc import Callable, Sequence

import grain
import numpy as np
from absl import logging
from array_record.python import array_record_module
from flax import serialization

from marjax.errors import DataError

SHARD_PATTERN = "{prefix}-{index:05d}-of-{count:05d}.array_record"
LABELS_FILE = "labels.json"


class CachedTokenSource:
    """The records (msgpack'd dicts of arrays) of a complete cache of shards `<prefix>-*-of-*`; `what`
    names the cache in errors ("latent", "code")."""

    def __init__(self, directory: str, prefix: str, what: str, num_classes: int = 0):
        """num_classes > 0: the count the run expects; a cache written with another (`labels.json`)
        raises DataError. Caches written before `labels.json` existed are not checked."""
        paths = sorted(glob.glob(os.path.join(directory, f"{prefix}-*-of-*.array_record")))
        if not paths:
            raise DataError(f"data.path={directory!r} holds no {what} cache shards ({prefix}-*-of-*.array_record); "
                            f"write them with `python -m marjax.cache_tokens --config=... --output={directory}`")
        counts = {int(p.rsplit("-of-", 1)[1].split(".")[0]) for p in paths}
        if len(counts) != 1 or len(paths) != counts.pop():
            raise DataError(f"data.path={directory!r} holds an incomplete {what} cache: {len(paths)} shards "
                            f"of {[os.path.basename(p) for p in paths]}")
        self.source = grain.sources.ArrayRecordDataSource(paths)
        if num_classes > 0:
            _check_labels(directory, what, num_classes)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        return serialization.msgpack_restore(self.source[index])


def _check_labels(directory: str, what: str, num_classes: int) -> None:
    info = os.path.join(directory, LABELS_FILE)
    if not os.path.isfile(info):
        return
    with open(info) as f:
        written = json.load(f)["num_classes"]
    if written == 0:
        raise DataError(f"data.path={directory!r}: the {what} cache was written without labels (data.num_classes=0), "
                        f"but data.num_classes={num_classes}; write it again with "
                        f"--config.data.num_classes={num_classes}, or train unconditionally with num_classes=0")
    if written != num_classes:
        raise DataError(f"data.path={directory!r}: the {what} cache holds labels of {written} classes, but "
                        f"data.num_classes={num_classes}; set --config.data.num_classes={written}")


def write_labels_info(output: str, num_classes: int) -> None:
    """Records in `output` the data.num_classes a cache is written with (0: no labels)."""
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, LABELS_FILE + ".tmp"), "w") as f:
        json.dump({"num_classes": int(num_classes)}, f)
    os.replace(os.path.join(output, LABELS_FILE + ".tmp"), os.path.join(output, LABELS_FILE))


def write_token_cache(source: Sequence[dict], encode: Callable[[np.ndarray], list[dict]], output: str, prefix: str,
                      batch_size: int, process_index: int = 0, process_count: int = 1) -> str:
    """Encodes records `process_index::process_count` of `source` into one shard; returns its path.

    encode: (batch_size, H, W, C) uint8 images (the last batch zero-padded, so one compiled encoder
    serves all) -> one dict of arrays per image, stored with the source's "label". Records keep the
    source's order within the shard.
    """
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, SHARD_PATTERN.format(prefix=prefix, index=process_index, count=process_count))
    indices = list(range(process_index, len(source), process_count))
    writer = array_record_module.ArrayRecordWriter(path + ".tmp", "group_size:1")
    for start in range(0, len(indices), batch_size):
        records = [source[i] for i in indices[start:start + batch_size]]
        images = np.stack([r["image"] for r in records])
        padded = np.concatenate([images, np.zeros((batch_size - len(images),) + images.shape[1:], images.dtype)])
        for record, encoded in zip(records, encode(padded)):
            writer.write(serialization.msgpack_serialize({**encoded, "label": np.int32(record["label"])}))
        logging.info("cached %d / %d records", min(start + batch_size, len(indices)), len(indices))
    writer.close()
    os.replace(path + ".tmp", path)  # a shard appears only when complete
    return path
