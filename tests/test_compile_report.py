"""`--mode=compile`'s report: a task's train step compiled from abstract inputs."""
import pytest

from configs import digits
from marjax.compile_report import compile_report
from marjax.errors import ConfigError
from marjax.models.mar import count_params
from marjax.tasks.mar import model_from_config


def tiny_config():
    c = digits.get_config()
    c.model.update(encoder_width=32, encoder_depth=1, encoder_heads=2, decoder_width=32, decoder_depth=1,
                   decoder_heads=2, diffloss_depth=1, diffloss_width=32)
    c.train.global_batch_size = 8
    return c


def test_report_counts_the_state_bytes_exactly_and_the_flops():
    config = tiny_config()
    setup, memory, cost = compile_report(config)
    num_params = count_params(model_from_config(config))
    assert setup["num_params"] == num_params and setup["global_batch"] == 8 and setup["num_devices"] == 1
    sizes = memory["per_device_bytes"]
    # fp32 params, EMA, Adam mu and nu, plus the int32 step and two optimizer counts.
    assert sizes["params"] == 4 * num_params
    assert sizes["state"] == 4 * 4 * num_params + 3 * 4
    assert sizes["aliases"] == sizes["state"]  # the donated state is updated in place
    assert sizes["arguments"] >= sizes["state"] and sizes["temps"] > 0
    assert sizes["peak"] == sizes["arguments"] + sizes["outputs"] - sizes["aliases"] + sizes["temps"]
    assert cost["flops_per_device"] > 1e6


def test_the_config_is_checked_through_its_task():
    config = tiny_config()
    config.task = "tokenizer"  # with the digits' tokenizer.kind="pixels": nothing to train
    with pytest.raises(ConfigError, match="task='tokenizer' trains an autoencoder"):
        compile_report(config)


PER_DEVICE_MEMORY = """
import jax, json
from marjax.config.loading import load_config_file
from marjax.compile_report import compile_report
temps = {}
for scan in (False, True):
    for n in (2, 8):
        config = load_config_file("configs/mar_base.py")
        config.model.update(encoder_depth=2, decoder_depth=2, scan_layers=scan)
        config.mesh.update(data=1, fsdp=n)
        config.train.global_batch_size = 4 * n
        config.train.mask_buckets = 1
        temps[f"scan={scan} devices={n}"] = compile_report(config, jax.devices()[:n])[1]["per_device_bytes"]["temps"]
print(json.dumps(temps))
"""


def test_fsdp_activation_memory_per_device_does_not_grow_with_the_device_count():
    """4 images per device on 2 and on 8 FSDP devices, MAR-B widths with two blocks each, unscanned
    and scanned: the same temporaries per device. Without the DiffLoss rows' batch sharding, XLA
    gathered all rows on every device (2.50 -> 6.91 GiB from 2 to 8 devices, one block each;
    1.91 GiB on both with it); without the blocks' input constraint, a scanned group kept its
    activations for the global batch (2.30 -> 4.33 GiB; 1.99 and 1.96 GiB with it)."""
    import json
    import subprocess
    import sys

    from tests.test_main_program import REPO, env, fake_devices

    result = subprocess.run([sys.executable, "-c", PER_DEVICE_MEMORY], cwd=REPO, env={**env(), **fake_devices(8)},
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    temps = json.loads(result.stdout.strip().splitlines()[-1])
    for scan in (False, True):
        assert temps[f"scan={scan} devices=8"] < 1.1 * temps[f"scan={scan} devices=2"], temps
