"""Parity with the reference PyTorch VQ-GPT (FoundationVision/LlamaGen ce98ec4) on a tiny random-weight model.

`fixtures/llamagen_gpt_tiny_reference.npz` holds numbers only, produced by running the reference code
outside this project: the state dict of a 2-layer, width-64 GPT (every weight perturbed, the zero output
weight included), the wqkv weights of its one-K/V-head variant, fixed codes and labels (one the null
class), and the reference's eval-mode logits, full forward and cached decoding. Its `config_json` entry
documents every array.
"""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.models.gpt import GPT, init_caches
from marjax.models.gpt_torch_layout import params_from_torch_state

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "llamagen_gpt_tiny_reference.npz"
RTOL = ATOL = 2e-5


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE))


def tiny_model(ref, num_kv_heads):
    config = json.loads(str(ref["config_json"]))["config"]
    return GPT(vocab_size=config["vocab_size"], grid_size=int(config["block_size"] ** 0.5),
               num_classes=config["num_classes"], width=config["dim"], depth=config["n_layer"],
               num_heads=config["n_head"], num_kv_heads=num_kv_heads, multiple_of=config["multiple_of"],
               class_dropout=config["class_dropout_prob"])


def state(ref, tag):
    """The reference state dict of the variant `tag`: "mha", or "gqa" (its own wqkv, the rest shared)."""
    params = {k[len("param/"):]: v for k, v in ref.items() if k.startswith("param/")}
    if tag == "gqa":
        params.update({k[len("gqa_param/"):]: v for k, v in ref.items() if k.startswith("gqa_param/")})
    return params


def cached_logits(model, params, codes, labels):
    """Prefill, then one code per step: (B, L, V) logits, step i predicting code i."""
    prefill = jax.jit(lambda caches: model.apply({"params": params}, labels, caches, method=GPT.prefill))
    decode = jax.jit(lambda code, position, caches: model.apply({"params": params}, code, position, caches,
                                                                method=GPT.decode))
    logits, caches = prefill(init_caches(model, codes.shape[0]))
    steps = [logits]
    for i in range(codes.shape[1] - 1):
        logits, caches = decode(codes[:, i], i + 1, caches)
        steps.append(logits)
    return jnp.stack(steps, axis=1)


@pytest.mark.parametrize("tag, num_kv_heads", [("mha", None), ("gqa", 1)])
def test_full_forward_and_cached_decoding(ref, tag, num_kv_heads):
    model = tiny_model(ref, num_kv_heads)
    params = params_from_torch_state(state(ref, tag), model)
    codes, labels = jnp.asarray(ref["codes"]), jnp.asarray(ref["labels"])
    full = model.apply({"params": params}, codes, labels)
    np.testing.assert_allclose(full, ref[f"{tag}/full_logits"], rtol=RTOL, atol=ATOL)
    # The reference decodes with a cache only without grouped heads (see config_json); its full
    # forward is the causal answer either way.
    expected = ref.get(f"{tag}/decode_logits", ref[f"{tag}/full_logits"])
    np.testing.assert_allclose(cached_logits(model, params, codes, labels), expected, rtol=RTOL, atol=ATOL)


def test_dropped_label_is_the_null_class(ref):
    """labels[1] in the fixture is the null class: dropping any label there gives the reference's logits."""
    model = tiny_model(ref, None)
    params = params_from_torch_state(state(ref, "mha"), model)
    labels = jnp.asarray(ref["labels"]).at[1].set(4)
    logits = model.apply({"params": params}, jnp.asarray(ref["codes"]), labels, jnp.array([False, True, False]))
    np.testing.assert_allclose(logits, ref["mha/full_logits"], rtol=RTOL, atol=ATOL)
