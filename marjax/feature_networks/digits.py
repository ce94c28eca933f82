"""The feature network for the digits, which have no Inception: a small MLP classifier trained
in-process on the real digits (the first 1,500, as `marjax.digits_check`'s SVM), seeded, in seconds.

Its 64-d penultimate layer (before its ReLU) plays pool3's part (an FID-like distance, precision/recall) and
its 10 logits the Inception logits' (a score like IS, with at most 10 classes, and the accuracy
with which class-conditional samples are recognised as the class they were asked for).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from marjax.data.digits import NUM_TRAIN, digit_pixels, load_digit_arrays


class DigitsClassifier(nn.Module):
    """(N, 64) pixels on the 0..16 scale -> {"pool": (N, feature_dim), "logits": (N, 10)}."""

    width: int = 256
    feature_dim: int = 64

    @nn.compact
    def __call__(self, pixels: jax.Array) -> dict[str, jax.Array]:
        x = nn.relu(nn.Dense(self.width)(pixels / 16.0))
        pool = nn.Dense(self.feature_dim)(x)  # before the ReLU: no dead unit makes the covariance singular
        return {"pool": pool, "logits": nn.Dense(10)(nn.relu(pool))}


@functools.lru_cache(maxsize=4)
def train_digits_classifier(seed: int = 0, steps: int = 1000, learning_rate: float = 1e-3) -> dict:
    """Params of `DigitsClassifier` after `steps` full-batch AdamW steps on the first 1,500 digits
    (one compiled scan). Deterministic for a seed on a given platform."""
    images, targets = load_digit_arrays()
    pixels = jnp.asarray(images[:NUM_TRAIN].reshape(NUM_TRAIN, 64), jnp.float32)
    labels = jnp.asarray(targets[:NUM_TRAIN])
    model = DigitsClassifier()
    params = model.init(jax.random.key(seed), pixels[:1])["params"]
    tx = optax.adamw(learning_rate, weight_decay=1e-3)

    def loss_fn(params):
        logits = model.apply({"params": params}, pixels)["logits"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def step(carry, _):
        params, opt_state = carry
        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), length=steps))(params)
    return jax.device_get(params)


def digits_features(params: dict, images: jax.Array) -> dict[str, jax.Array]:
    """(N, 8k, 8k, 1) uint8 digit images -> {"pool": (N, 64), "logits": (N, 10)} float32."""
    return DigitsClassifier().apply({"params": params}, digit_pixels(images, jnp.float32))


def heldout_accuracy(params: dict) -> float:
    """The classifier's accuracy on the 297 real digits it did not see (the ceiling for samples)."""
    images, targets = load_digit_arrays()
    heldout = jnp.asarray(images[NUM_TRAIN:].reshape(-1, 64), jnp.float32)
    logits = DigitsClassifier().apply({"params": params}, heldout)["logits"]
    return float((np.asarray(logits).argmax(1) == targets[NUM_TRAIN:]).mean())
