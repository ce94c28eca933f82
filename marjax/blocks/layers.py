"""Layer factories with the reference initialisation and numerics, and logical axis names.

The reference initialises every Linear with xavier-uniform weights and zero bias, and every
LayerNorm with (1, 0) and eps 1e-6. Flax's default LayerNorm computes the variance as
E[x^2] - E[x]^2; `use_fast_variance=False` matches PyTorch's two-pass variance.

Every param is created through `named` with one logical axis name per dimension ("embed",
"mlp", ...; see `marjax.sharding`), so `model.init` returns boxed params; callers keep the
plain arrays (`nn.unbox`) and read the names from the boxes.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Axes = tuple[str | None, ...]

xavier_uniform = nn.initializers.xavier_uniform()


def named(init: nn.initializers.Initializer, *axes: str | None) -> nn.initializers.Initializer:
    """`init` whose param carries the logical axis names `axes`, one per dimension."""
    return nn.with_logical_partitioning(init, axes)


class FlatDense(nn.Dense):
    """nn.Dense computed as one 2-D matmul: inputs (..., D_in) are flattened to (N, D_in) and the
    output reshaped back to (..., D_out). Same params and numbers as nn.Dense; on XLA's CPU backend
    the backward pass of a 3-D dot_general runs about 2x slower than the 2-D one (the weight
    gradient contracts two dimensions), and on accelerators the reshape is free."""

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        flat = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
        return flat.reshape(inputs.shape[:-1] + (self.features,))


def dense(features: int, name: str, dtype: Dtype = jnp.float32, use_bias: bool = True,
          kernel_init: nn.initializers.Initializer = xavier_uniform, axes: Axes = ("embed", "embed")) -> nn.Dense:
    """A Linear with fp32 params, `dtype` compute and the reference init (xavier, zero bias);
    `axes`: the logical names of its (input, output) dimensions."""
    return FlatDense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=named(kernel_init, *axes), bias_init=named(nn.initializers.zeros, axes[1]),
                    name=name)


def layer_norm(name: str | None = None, dtype: Dtype = jnp.float32, affine: bool = True) -> nn.LayerNorm:
    """LayerNorm with eps 1e-6, PyTorch's variance, statistics in fp32; `affine=False` has no params."""
    return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, use_scale=affine, use_bias=affine,
                        dtype=dtype, param_dtype=jnp.float32, scale_init=named(nn.initializers.ones, "norm"),
                        bias_init=named(nn.initializers.zeros, "norm"), name=name)
