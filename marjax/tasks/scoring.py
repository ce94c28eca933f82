"""Scoring generated samples: the feature network (FID's Inception-v3 or the digits one), the
reference statistics, generating and extracting features batch by batch on the mesh, and the
metrics. `--mode=eval` (marjax.evaluate) and the training loop's periodic check use it.

Feature networks (`eval.feature_network`): "inception" (FID's Inception-v3, weights from
`eval.inception_weights`) or "digits" (`marjax.feature_networks.digits`, trained in-process). The
reference is an ADM-style `.npz` (`eval.reference`: `mu`/`sigma` for FID and/or `arr_0` uint8
images, whose features give precision/recall and, lacking mu/sigma, the statistics) or, with
no file, `eval.num_reference_images` evenly spaced records of the run's data source.
"""
import dataclasses
import functools
import os
import zipfile
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from marjax import metrics
from marjax.data.sources import make_source
from marjax.errors import ConfigError
from marjax.feature_networks import inception
from marjax.feature_networks.digits import digits_features, heldout_accuracy, train_digits_classifier
from marjax.feature_networks.inception_torch_layout import load_inception_params
from marjax.image_files import write_png
from marjax.data.class_labels import reported_labels, sample_labels
from marjax.parallel.sharding import BATCH_AXES, batch_sharding, replicated
from marjax.tasks.base import Task
from marjax.tasks.generation import require_varied

ADM_REFERENCE_FILE = "VIRTUAL_imagenet256_labeled.npz"


@dataclasses.dataclass(frozen=True)
class FeatureNetwork:
    """`extract`: (N, H, W, C) uint8 images (a global array) -> {"pool": (N, D) features for FID and
    precision/recall, "logits": (N, K) for the Inception Score}. `classifies_labels`: logit k is
    the dataset's class k, so samples' recognition accuracy means something."""

    name: str
    extract: Callable[[jax.Array], dict[str, jax.Array]]
    classifies_labels: bool
    figures: dict  # facts about the network to report with the metrics


def make_feature_network(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> FeatureNetwork:
    """The network of `eval.feature_network`, its params replicated on the mesh. FileNotFoundError
    (naming the file) when the Inception weights are absent."""
    if config.eval.feature_network == "digits":
        params = train_digits_classifier(config.seed)
        extract = jax.jit(functools.partial(digits_features, jax.device_put(params, replicated(mesh))))
        return FeatureNetwork("digits", extract, True, {"classifier_heldout_accuracy": heldout_accuracy(params)})
    params = jax.device_put(load_inception_params(config.eval.inception_weights), replicated(mesh))

    def extract(images):  # torch-fidelity's Inception Score reads the logits without the fc bias
        outputs = inception.features(params, images)
        return {"pool": outputs["pool"], "logits": outputs["logits_unbiased"]}

    return FeatureNetwork("inception", extract, False, {})


def split_host_array(values: np.ndarray, mesh: jax.sharding.Mesh) -> jax.Array:
    """A host array, the same on every process, as a global array split over the mesh's batch axes
    (unlike the training input's `data.pipeline.global_batch`, where each process holds its own part)."""
    return jax.make_array_from_callback(values.shape, batch_sharding(mesh), lambda index: values[index])


def padded_batches(values: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """(batch padded by repeating its entries to `batch_size`, count of real entries) over
    `values`, so every batch has one static shape."""
    for start in range(0, len(values), batch_size):
        batch = values[start:start + batch_size]
        yield batch[np.arange(batch_size) % len(batch)], len(batch)


def features_of_images(network: FeatureNetwork, num_images: int, load: Callable[[np.ndarray], np.ndarray],
                       batch_size: int, mesh: jax.sharding.Mesh) -> dict[str, np.ndarray]:
    """{"pool", "logits"} host arrays of `num_images` images, read batch by batch: `load(indices)`
    returns the (B, H, W, C) uint8 images of those indices."""
    chunks = []
    for indices, count in padded_batches(np.arange(num_images), batch_size):
        outputs = multihost_utils.process_allgather(network.extract(split_host_array(load(indices), mesh)), tiled=True)
        chunks.append({k: v[:count] for k, v in outputs.items()})
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


@dataclasses.dataclass(frozen=True)
class Reference:
    """Reference statistics for FID, and reference features (or None) for precision/recall."""

    mean: np.ndarray
    covariance: np.ndarray
    features: np.ndarray | None


def load_reference(config: ml_collections.ConfigDict, network: FeatureNetwork, batch_size: int,
                   mesh: jax.sharding.Mesh) -> Reference:
    """From the `eval.reference` .npz (mu/sigma; arr_0 images, read at once: 2 GB for ADM's 10,000
    at 256x256), else from records of the data source, read batch by batch."""
    path = config.eval.reference
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"eval.reference={path!r} does not exist: give an ADM-style reference batch "
                                    f"(e.g. {ADM_REFERENCE_FILE}, with mu/sigma and/or arr_0 images)")
        try:
            with np.load(path) as data:
                stats = (data["mu"], data["sigma"]) if "mu" in data and "sigma" in data else None
                images = data["arr_0"] if "arr_0" in data and (stats is None or config.eval.precision_recall) else None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ConfigError(f"eval.reference={path!r} is not a readable .npz ({type(e).__name__}: {e}); give an "
                              f"ADM-style reference batch such as {ADM_REFERENCE_FILE}") from e
        if stats is None and images is None:
            raise ConfigError(f"eval.reference={path!r} holds neither mu/sigma nor arr_0 images")
        num_images, load = (0, None) if images is None else (len(images), images.__getitem__)
        what = f"{path} (mu/sigma: {stats is not None}, images: {num_images})"
    else:
        source = make_source(config.data)
        records = np.linspace(0, len(source) - 1, min(config.eval.num_reference_images, len(source))).astype(int)
        num_images, stats = len(records), None

        def load(indices):
            return np.stack([source[int(records[i])]["image"] for i in indices])

        what = f"{num_images} records of data.source={config.data.source!r}"
    features = None
    if num_images:
        features = features_of_images(network, num_images, load, batch_size, mesh)["pool"]
        if stats is None:
            stats = metrics.feature_statistics(features)
    logging.info("reference for %s features: %s", network.name, what)
    return Reference(np.asarray(stats[0], np.float64), np.asarray(stats[1], np.float64),
                     features if config.eval.precision_recall else None)


def score(network: FeatureNetwork, reference: Reference, pool: np.ndarray, logits: np.ndarray,
          labels: np.ndarray | None) -> dict[str, float]:
    """The metrics of generated features (N, D) and logits (N, K) for requested `labels` (N,), or
    None for an unconditional model's samples (no accuracy then)."""
    fid = metrics.frechet_distance(*metrics.feature_statistics(pool), reference.mean, reference.covariance)
    is_mean, is_std = metrics.inception_score(logits)
    figures = {"fid": fid, "inception_score": is_mean, "inception_score_std": is_std}
    if reference.features is not None:
        figures["precision"], figures["recall"] = metrics.precision_recall(reference.features, pool)
    if network.classifies_labels and labels is not None:
        figures["accuracy"] = float((logits.argmax(axis=1) == labels).mean())
    return figures


def generate_and_extract(config: ml_collections.ConfigDict, task: Task, params: dict, labels: np.ndarray,
                         network: FeatureNetwork, mesh: jax.sharding.Mesh, batch_size: int,
                         png_directory: str | None, source: str) -> dict[str, np.ndarray]:
    """Generates one image per label on the mesh with the task's `generate`, batch by batch;
    returns the host features {"pool", "logits"}. Images never accumulate: each batch is dropped
    (or written as PNGs). `source` names the params' checkpoint when the first batch comes out
    all flat colours (DegenerateSamples)."""
    rng = jax.random.key(config.sample.seed)
    chunks, done = [], 0
    for batch, count in padded_batches(labels, batch_size):
        images = task.generate(params, split_host_array(batch, mesh), jax.random.fold_in(rng, done))
        if done == 0:
            require_varied(images, source)
        outputs = multihost_utils.process_allgather(network.extract(images), tiled=True)
        chunks.append({k: v[:count] for k, v in outputs.items()})
        if png_directory:
            host_images = multihost_utils.process_allgather(images, tiled=True)[:count]
            if jax.process_index() == 0:
                for i, (image, label) in enumerate(zip(host_images, batch[:count])):
                    name = f"{done + i:06d}_class{label}" if config.data.num_classes else f"{done + i:06d}"
                    write_png(os.path.join(png_directory, f"{name}.png"), image, min_side=1)
        done += count
        logging.info("evaluated %d / %d samples", done, len(labels))
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}




def eval_batch_size(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
    """`eval.batch_size` rounded up so every batch shard of `mesh` gets a share."""
    shards = int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))
    return -(-config.eval.batch_size // shards) * shards


class PeriodicScore:
    """The training loop's check of its samples: `train.eval_num_images` images of the given params
    scored as `--mode=eval` scores them (the `eval` section's network and reference, made at the
    first call and kept)."""

    def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
        self.config, self.mesh = config, mesh
        self.network: FeatureNetwork | None = None
        self.reference: Reference | None = None

    def __call__(self, task: Task, params: dict, step: int) -> dict[str, float]:
        """The metrics (`score`) of samples of `params` at training step `step`."""
        batch_size = eval_batch_size(self.config, self.mesh)
        if self.network is None:
            self.network = make_feature_network(self.config, self.mesh)
            self.reference = load_reference(self.config, self.network, batch_size, self.mesh)
        labels = sample_labels(self.config.train.eval_num_images, self.config.data.num_classes,
                               self.config.sample.classes)
        outputs = generate_and_extract(self.config, task, params, labels, self.network, self.mesh, batch_size, None,
                                       f"the params at training step {step}")
        return score(self.network, self.reference, outputs["pool"], outputs["logits"],
                     reported_labels(labels, self.config.data.num_classes))
