"""`--mode=compile`'s report: the MAR train step compiled from abstract inputs."""
import pytest

from configs import digits
from marjax.compile_report import compile_report
from marjax.config_checks import ConfigError
from marjax.builders import model_from_config
from marjax.models.mar import count_params


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


def test_a_tokenizer_config_is_refused():
    config = tiny_config()
    config.task = "tokenizer"
    with pytest.raises(ConfigError, match="plans the MAR train step"):
        compile_report(config)
