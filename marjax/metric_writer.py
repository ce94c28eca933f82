"""A run's metrics to TensorBoard event files and the log, and its progress (steps/s, ETA), without
TensorFlow.

Importing TensorFlow takes seconds, which every start and resume of a run would pay (clu's writers
import it). These write the records TensorBoard's scalar, image and hparams plugins read through
the tensorboard package's protos and record framing, and open the event file with etils.epath, as
Orbax opens its files, so a workdir on GCS works the same.
"""
import io
import os
import socket
import time
from collections.abc import Mapping

import numpy as np
from absl import logging
from etils import epath
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.summary.writer.record_writer import RecordWriter


def _plugin(name: str) -> summary_pb2.SummaryMetadata:
    return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=name))


def _shape(*sizes: int) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in sizes])


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


class MetricWriter:
    """Scalars, image batches and hyperparameters to an event file in `logdir` and to the log;
    with `just_logging` (processes other than the first), to the log only."""

    def __init__(self, logdir: str, just_logging: bool = False):
        self._records = None
        if not just_logging:
            directory = epath.Path(logdir)
            directory.mkdir(parents=True, exist_ok=True)
            name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.v2"
            self._records = RecordWriter((directory / name).open("wb"))
            self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: event_pb2.Event) -> None:
        if self._records is not None:
            self._records.write(event.SerializeToString())
            self._records.flush()  # on disk at once: a run killed with -9 keeps the metrics it logged

    def _summary(self, step: int, values: list) -> None:
        self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)))

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Each value as a scalar summary (a float32 tensor, as tf.summary.scalar writes it)."""
        logging.info("[%d] %s", step, ", ".join(f"{key}={float(value):.6g}" for key, value in scalars.items()))
        self._summary(step, [summary_pb2.Summary.Value(
            tag=key, metadata=_plugin("scalars"),
            tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(), float_val=[float(value)]))
            for key, value in scalars.items()])

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Each (N, H, W, C) uint8 batch as one image summary of N PNGs (as tf.summary.image writes it)."""
        logging.info("[%d] images %s", step, {key: tuple(np.shape(value)) for key, value in images.items()})
        values = []
        for key, batch in images.items():
            batch = np.asarray(batch)
            encoded = [str(batch.shape[2]).encode(), str(batch.shape[1]).encode(), *(_png(image) for image in batch)]
            values.append(summary_pb2.Summary.Value(
                tag=key, metadata=_plugin("images"),
                tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=_shape(len(encoded)),
                                              string_val=encoded)))
        self._summary(step, values)

    def write_hparams(self, hparams: Mapping[str, bool | int | float | str]) -> None:
        """The run's settings for TensorBoard's hparams plugin."""
        logging.info("[Hyperparameters] %s", dict(hparams))
        self._write(event_pb2.Event(wall_time=time.time(), summary=hparams_summary.hparams_pb(dict(hparams))))

    def flush(self) -> None:
        if self._records is not None:
            self._records.flush()

    def close(self) -> None:
        if self._records is not None:
            self._records.close()
            self._records = None


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(seconds % 60):02d}s"


class ProgressReport:
    """Called after each step: every `every_steps` steps, "12.3 steps/s, 45.0% (1350/3000), ETA:
    2m05s" in the log and steps_per_sec and uptime (seconds since it was made) to `writer`."""

    def __init__(self, total_steps: int, writer: MetricWriter, every_steps: int):
        self._total, self._writer, self._every = total_steps, writer, every_steps
        self._start = time.monotonic()
        self._last: tuple[int, float] | None = None

    def __call__(self, step: int) -> None:
        now = time.monotonic()
        if self._last is None:  # the first step of a run (or resumed run) compiles: rates start after it
            self._last = (step, now)
            return
        if step % self._every:
            return
        rate = (step - self._last[0]) / max(now - self._last[1], 1e-9)
        logging.info("%.1f steps/s, %.1f%% (%d/%d), ETA: %s", rate, 100 * step / self._total, step, self._total,
                     _duration((self._total - step) / rate))
        self._writer.write_scalars(step, {"steps_per_sec": rate, "uptime": now - self._start})
        self._last = (step, now)
