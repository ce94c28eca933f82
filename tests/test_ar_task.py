"""The MAR paper's Table 1 from one codebase: every head x order x attention cell trains (a falling
loss on a fixed batch), and head/tokenizer/sampler settings that do not fit are refused at start."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ar_digits, digits, mar_digits_vq
from marjax.data.digits import DigitsSource
from marjax.data.image_ops import to_model_range
from marjax.errors import ConfigError
from marjax.parallel.sharding import make_mesh
from marjax.tasks.registry import check_config, make_task
from marjax.tasks.train_state import jit_train_step
from tests.random_tokenizers import write_random_tokenizer


def tiny(variant: str, tmp_path) -> object:
    """A tiny config of one cell: "mar", "mar_vq" (bidirectional, random order) or an ar_digits variant."""
    if variant.startswith("mar"):
        c = mar_digits_vq.get_config() if variant == "mar_vq" else digits.get_config()
        c.model.update(encoder_width=32, encoder_depth=1, encoder_heads=2, decoder_width=32, decoder_depth=1,
                       decoder_heads=2, diffloss_depth=1, diffloss_width=32)
    else:
        c = ar_digits.get_config(variant)
        c.model.update(width=32, depth=2, num_heads=2, diffloss_depth=1, diffloss_width=32)
    c.train.update(global_batch_size=8, base_lr=0.02, warmup_epochs=0.0, num_steps=40)
    if variant.endswith("_vq"):
        c.tokenizer.update(ch=32, ch_mult=(1, 2), z_channels=32, codebook_size=16, code_dim=4)
        write_random_tokenizer(c, str(tmp_path / "vq"))
    return c


@pytest.mark.parametrize("variant", ["raster", "random", "raster_vq", "random_vq", "mar_vq"])
def test_every_cell_trains(variant, tmp_path):
    config = tiny(variant, tmp_path)
    check_config(config)
    source = DigitsSource(config.data.image_size)
    mesh = make_mesh(devices=jax.devices()[:1])
    task = make_task(config, mesh, source=source)
    step = jit_train_step(task.step, task.shardings, mesh)
    state = jax.jit(task.init, out_shardings=task.shardings)(jax.random.key(0))
    records = [source[i] for i in range(8)]
    batch = task.prepare_batch({"images": jnp.asarray(np.stack([to_model_range(r["image"]) for r in records])),
                                "labels": jnp.asarray([r["label"] for r in records], jnp.int32)}, jax.random.key(0))
    losses = []
    for _ in range(40):
        state, metrics = step(state, batch, jax.random.key(1), task.frozen)
        losses.append(float(metrics["loss"]))
    # Noisy per step (orders, timesteps, label drop are redrawn), so compare the means of the ends.
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses


@pytest.mark.parametrize("change, message", [
    ({"model.head": "softmax"}, "predicts VQ codes: set tokenizer.kind='vq'"),
    ({"sample.top_k": 5}, "sample.top_k=5 has no effect on task='ar'"),
    ({"model.order": "spiral"}, "model.order='spiral'; choose one of"),
    ({"sample.num_iter": 8}, "sample.num_iter=8 has no effect"),
    ({"model.num_heads": 3}, "model.width=128 is not divisible by model.num_heads=3"),
])
def test_invalid_settings_fail_at_start(change, message):
    config = ar_digits.get_config("raster")
    for key, value in change.items():
        section, field = key.split(".")
        config[section][field] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_config(config)


def test_diffloss_refuses_codes():
    config = ar_digits.get_config("raster_vq")
    config.model.head = "diffloss"
    with pytest.raises(ConfigError, match="needs continuous tokens"):
        check_config(config, weights=False)
