"""`--mode=eval`: generate `eval.num_images` samples from a run and score them against a reference.

  python -m marjax.main --config=configs/mar_large.py --workdir=/ckpt/mar_large --mode=eval \
      --config.eval.inception_weights=/weights/pt_inception-2015-12-05-6726825d.pth \
      --config.eval.reference=/data/VIRTUAL_imagenet256_labeled.npz
  python -m marjax.main --config=configs/digits.py --workdir=/tmp/marjax-digits --mode=eval

1. Restore checkpoint `sample.step` (default: the latest) with EMA params (`sample.use_ema`).
2. Labels balanced over the classes (`sample.classes`), generated batch by batch with the
   `sample.*` sampler settings, each batch split over all devices of the mesh. The images are
   quantised to uint8 and passed through the feature network on those devices; only the
   features come back to the host (and the images, when `eval.save_png` writes them).
3. Metrics (`marjax.metrics`) against the reference: FID, IS, precision/recall, and for a
   network that classifies the dataset's own classes (the digits one) the accuracy with which
   samples are recognised as the class they were asked for. Written to TensorBoard
   (`eval/<name>` at the checkpoint's step) and to `<workdir>/eval_step_<N>.json`.

Feature networks and references: `marjax.tasks.scoring`.
"""
import json
import os

import jax
import ml_collections
from absl import logging

from marjax.data.class_labels import reported_labels, sample_labels
from marjax.metric_writer import MetricWriter
from marjax.parallel.sharding import mesh_from_config
from marjax.tasks.registry import check_config, restore_generator
from marjax.tasks.scoring import eval_batch_size, generate_and_extract, load_reference, make_feature_network, score


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """`--mode=eval`; returns the figures also written to `<workdir>/eval_step_<N>.json`."""
    check_config(config)
    mesh = mesh_from_config(config.mesh)
    batch_size = eval_batch_size(config, mesh)
    network = make_feature_network(config, mesh)
    reference = load_reference(config, network, batch_size, mesh)
    task, params, step = restore_generator(config, workdir, mesh)
    labels = sample_labels(config.eval.num_images, config.data.num_classes, config.sample.classes)
    png_directory = os.path.join(workdir, f"eval_step_{step}") if config.eval.save_png else None
    if png_directory and jax.process_index() == 0:
        os.makedirs(png_directory, exist_ok=True)
    logging.info("evaluating step %d (%s params): %d samples in batches of %d on %d devices, %s features",
                 step, "EMA" if config.sample.use_ema else "raw", len(labels), batch_size, mesh.size, network.name)
    outputs = generate_and_extract(config, task, params, labels, network, mesh, batch_size, png_directory,
                                   f"checkpoint {step} in {workdir}/checkpoints")
    figures = score(network, reference, outputs["pool"], outputs["logits"],
                    reported_labels(labels, config.data.num_classes))
    writer = MetricWriter(workdir, just_logging=jax.process_index() > 0)
    writer.write_scalars(step, {f"eval/{k}": v for k, v in figures.items()})
    writer.close()
    report = {"step": step, "feature_network": network.name, "num_images": len(labels), **figures, **network.figures,
              "sample": {k: config.sample[k] for k in ("num_iter", "cfg", "cfg_schedule", "temperature",
                                                       "num_diffusion_steps", "use_ema", "seed")}}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"eval_step_{step}.json"), "w") as f:
            json.dump(report, f, indent=1)
    logging.info("eval at step %d: %s", step, json.dumps(figures))
    return report
