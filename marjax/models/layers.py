"""Layer factories with the reference initialisation and numerics.

The reference initialises every Linear with xavier-uniform weights and zero bias, and every
LayerNorm with (1, 0) and eps 1e-6. Flax's default LayerNorm computes the variance as
E[x^2] - E[x]^2; `use_fast_variance=False` matches PyTorch's two-pass variance.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

xavier_uniform = nn.initializers.xavier_uniform()


def dense(features: int, name: str, dtype: Dtype = jnp.float32, use_bias: bool = True,
          kernel_init: nn.initializers.Initializer = xavier_uniform) -> nn.Dense:
    """A Linear with fp32 params, `dtype` compute and the reference init (xavier, zero bias)."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=kernel_init, bias_init=nn.initializers.zeros, name=name)


def layer_norm(name: str | None = None, dtype: Dtype = jnp.float32, affine: bool = True) -> nn.LayerNorm:
    """LayerNorm with eps 1e-6, PyTorch's variance, statistics in fp32; `affine=False` has no params."""
    return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, use_scale=affine, use_bias=affine,
                        dtype=dtype, param_dtype=jnp.float32, name=name)
