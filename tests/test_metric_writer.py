"""The event files marjax.metric_writer writes, read back with TensorFlow's own reader, and the
start-up import it exists for: no program imports TensorFlow unless it reads TFDS."""
import glob
import io
import subprocess
import sys

import numpy as np
from PIL import Image

from marjax.metric_writer import MetricWriter, ProgressReport


def events(logdir):
    import tensorflow as tf

    (path,) = glob.glob(f"{logdir}/events.out.tfevents.*")
    return list(tf.compat.v1.train.summary_iterator(path))


def test_scalars_images_and_hparams_read_back_as_tensorflow_wrote_them(tmp_path):
    import tensorflow as tf

    writer = MetricWriter(str(tmp_path))
    writer.write_hparams({"train.base_lr": 1e-4, "model.head": "diffloss", "train.num_steps": 8})
    writer.write_scalars(3, {"loss": 0.25, "grad_norm": 2.0})
    digits = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8, 1)
    writer.write_images(4, {"samples": digits})
    writer.close()
    found = {(e.step, v.tag): v for e in events(tmp_path) for v in e.summary.value}
    assert float(tf.make_ndarray(found[(3, "loss")].tensor)) == 0.25
    assert float(tf.make_ndarray(found[(3, "grad_norm")].tensor)) == 2.0
    assert found[(3, "loss")].metadata.plugin_data.plugin_name == "scalars"
    width, height, *pngs = found[(4, "samples")].tensor.string_val
    assert (width, height, len(pngs)) == (b"8", b"8", 2)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(pngs[1]))), digits[1, ..., 0])
    assert any(v.metadata.plugin_data.plugin_name == "hparams" for (_, _), v in found.items())


def test_a_writer_of_another_process_only_logs(tmp_path):
    writer = MetricWriter(str(tmp_path / "run"), just_logging=True)
    writer.write_scalars(1, {"loss": 1.0})
    writer.close()
    assert not (tmp_path / "run").exists()


def test_progress_reports_rates_after_the_first_step(tmp_path):
    writer = MetricWriter(str(tmp_path))
    progress = ProgressReport(total_steps=10, writer=writer, every_steps=2)
    for step in range(1, 11):
        progress(step)
    writer.close()
    steps = sorted(e.step for e in events(tmp_path) for v in e.summary.value if v.tag == "steps_per_sec")
    assert steps == [2, 4, 6, 8, 10]


def test_no_program_imports_tensorflow_at_start():
    """TensorFlow takes seconds to import; only a TFDS data source may load it."""
    code = "import sys, marjax.main, marjax.api; print(sorted(m for m in ('tensorflow', 'clu') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
