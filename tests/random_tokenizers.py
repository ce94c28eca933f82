"""Tokenizer weights for tests: the autoencoder of a config's tokenizer section with random params,
written where `tokenizer.checkpoint` reads a converted tokenizer."""
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from marjax.tasks.tokenizer_from_config import abstract_tokenizer_params, autoencoder_from_config


def write_random_tokenizer(config: ml_collections.ConfigDict, directory: str, seed: int = 0) -> None:
    """Initialises `config.tokenizer`'s autoencoder from `seed`, perturbs every leaf (so zero-initialised
    layers do not hide a mistake), saves it to `directory` and points `config.tokenizer.checkpoint` there."""
    model = autoencoder_from_config(config)
    shapes = abstract_tokenizer_params(model)
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(shapes))))
    params = jax.tree.map(lambda s: 0.1 * jax.random.normal(next(keys), s.shape, s.dtype), shapes)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.abspath(directory), params)
    checkpointer.wait_until_finished()
    config.tokenizer.checkpoint = directory
