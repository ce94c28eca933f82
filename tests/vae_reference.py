"""The small reference KL-VAE of `fixtures/kl_vae_tiny_reference.npz`, shared by the VAE tests.

The fixture holds a random-weight model in the reference's state-dict layout (float16-exact
weights, keys "state/<torch key>"), inputs ("images", "latents") and the reference's outputs
("moments", "decoded"), produced by LTH14/mar models/vae.py outside the project.
"""
import os

import jax
import numpy as np

from marjax.tokenizers.kl import AutoencoderKL, init_vae_params
from marjax.tokenizers.kl_torch_layout import params_from_torch_state

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "kl_vae_tiny_reference.npz")
TINY_VAE = AutoencoderKL(embed_dim=4, ch=32, ch_mult=(2, 1), num_res_blocks=1, attn_resolutions=(8,), resolution=16)


def load_reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def reference_state(reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference's state dict, float32."""
    return {k[len("state/"):]: v.astype(np.float32) for k, v in reference.items() if k.startswith("state/")}


def reference_params(reference: dict[str, np.ndarray]) -> dict:
    """TINY_VAE params converted from the reference's state dict."""
    shapes = jax.eval_shape(lambda: init_vae_params(TINY_VAE, jax.random.key(0), 16))
    return params_from_torch_state(reference_state(reference), shapes)
