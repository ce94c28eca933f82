"""A stack of transformer Blocks, run one after another or as one `nn.scan`, each optionally
rematerialised; and the two param layouts this gives.

Unscanned, block i of a group lives at `<group>_<i>` (the reference's layout, which the
converters map). Scanned (`scan=True`), the group is one Block at `<group>` whose params have a
leading axis of size depth, logical name `LAYER_AXIS`: XLA compiles one block instead of depth
copies. `stack_block_params` and `unstack_block_params` move params between the two layouts.
The blocks' KV caches (causal decoding) follow the same two layouts (`init_caches`).

Remat trades compute for memory: the backward pass recomputes a block's activations instead of
keeping them from the forward pass. It changes neither the params nor the numbers.
"""
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from marjax.blocks.attention import KVCache
from marjax.blocks.layers import Dtype
from marjax.parallel.sharding import LAYER_AXIS

# What a rematerialised block keeps for the backward pass (None: no remat, everything kept).
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,                    # keep only the block's input
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,    # keep matmul outputs too
}


def make_blocks(make_block: Callable[[str], nn.Module], group: str, depth: int,
                scan: bool) -> nn.Module | list[nn.Module]:
    """`depth` blocks `make_block("<group>_<i>")`, or with `scan` the one block `make_block(group)`
    that `run_blocks` scans over stacked params."""
    return make_block(group) if scan else [make_block(f"{group}_{i}") for i in range(depth)]


def init_caches(depth: int, scan: bool, batch: int, max_len: int, kv_heads: int, head_dim: int,
                dtype: Dtype = jnp.float32, chunks: int = 1) -> list[KVCache] | KVCache:
    """Empty KV caches for the blocks of `make_blocks(..., depth, scan)`, each `KVCache.init(batch,
    max_len, kv_heads, head_dim, dtype, chunks)`: a list of `depth` caches, or with `scan` one cache
    whose leaves (length included) lead with an axis of size depth, which the scan runs over."""
    cache = KVCache.init(batch, max_len, kv_heads, head_dim, dtype, chunks)
    if scan:
        return jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (depth,) + leaf.shape), cache)
    return [cache] * depth


def run_blocks(blocks: nn.Module | Sequence[nn.Module], x: jax.Array, kv_lengths: jax.Array | None,
               deterministic: bool, remat: str, depth: int,
               batch_sharding: jax.sharding.Sharding | None = None, *, mask: jax.Array | None = None,
               caches: list[KVCache] | KVCache | None = None,
               ) -> jax.Array | tuple[jax.Array, list[KVCache] | KVCache]:
    """Applies the blocks of `make_blocks` in order: x (B, N, D) -> (B, N, D), or with `caches`
    ((B, N, D), the updated caches).

    kv_lengths: (B,) valid key rows, the same for every block, or None. remat: a key of
    REMAT_POLICIES. depth: the number of blocks (the scan length when `blocks` is one module).
    batch_sharding: the mesh's batch sharding, which each block's input keeps; None on one device.
    mask: bool, broadcastable to (B, heads, N, keys), the same for every block, or None.
    caches: the blocks' KV caches in the layout of `init_caches`, or None.
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; choose one of {list(REMAT_POLICIES)}")

    # `deterministic` is a Python bool that picks code paths: closed over, it stays static
    # under remat and scan. Returns (x, cache), cache None without one: a scan body's (carry, ys).
    def apply(block: nn.Module, x: jax.Array, kv_lengths: jax.Array | None, mask: jax.Array | None,
              cache: KVCache | None) -> tuple[jax.Array, KVCache | None]:
        if batch_sharding is not None:
            # Without it XLA loses the batch split inside a scan: the per-layer activations kept
            # for the backward pass were held for the whole global batch on every device.
            x = jax.lax.with_sharding_constraint(x, batch_sharding)
        out = block(x, kv_lengths, deterministic, mask=mask, cache=cache)
        return (out, None) if cache is None else out

    scan = not isinstance(blocks, Sequence)
    if remat != "none":
        # Inside a scan the loop boundary already keeps XLA from merging the recomputation
        # back into the forward pass; the CSE barrier would only cost time.
        apply = nn.remat(apply, policy=REMAT_POLICIES[remat], prevent_cse=not scan)
    if not scan:
        updated = []
        for block, cache in zip(blocks, [None] * depth if caches is None else caches):
            x, cache = apply(block, x, kv_lengths, mask, cache)
            updated.append(cache)
        return x if caches is None else (x, updated)
    scanned = nn.scan(apply, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast, nn.broadcast, 0), length=depth,
                      metadata_params={nn.PARTITION_NAME: LAYER_AXIS})
    x, caches = scanned(blocks, x, kv_lengths, mask, caches)
    return x if caches is None else (x, caches)


def stack_block_params(params: dict, groups: Sequence[str]) -> dict:
    """Unscanned -> scanned layout: for each group present as `<group>_0`, `<group>_1`, ..., one
    entry `<group>` whose leaves are the blocks' leaves stacked on a new leading axis (depth, ...).
    Other entries are kept as they are."""
    params = dict(params)
    for group in groups:
        blocks = []
        while f"{group}_{len(blocks)}" in params:
            blocks.append(params.pop(f"{group}_{len(blocks)}"))
        if blocks:
            params[group] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *blocks)
    return params


def unstack_block_params(params: dict, groups: Sequence[str]) -> dict:
    """Scanned -> unscanned layout, the inverse of `stack_block_params`: each `<group>` present,
    with leaves (depth, ...), becomes `<group>_0` ... `<group>_<depth-1>`. Other entries are kept."""
    params = dict(params)
    for group in groups:
        if group in params:
            stacked = params.pop(group)
            depth = jax.tree.leaves(stacked)[0].shape[0]
            params.update({f"{group}_{i}": jax.tree.map(lambda leaf: leaf[i], stacked) for i in range(depth)})
    return params
