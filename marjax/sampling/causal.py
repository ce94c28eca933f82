"""Next-token generation with a static KV cache (VQ-GPT, the causal AR baselines) as one compiled program.

The loop, `decode`, is a pure function over three small callables, in the manner of maskgit's
`parallel_decode`: `prefill(caches)` runs the class token, `choose(out, i)` turns the model output
of step i into one token per sample (CFG, temperature, top-k/p on logits, or the DiffLoss reverse
process) and `step(token, i, caches)` feeds that token back. Prefill, then `lax.scan` over the
tokens (one scan per chunk of the KV caches); the models hold no sampler code, and this loop no
model code. `generate_codes` (GPT) and `generate_ar` (AR, both heads) are thin wrappers that build
the three callables.

Step i generates the token at grid position targets[:, i]: i for GPT and raster AR, orders[:, i]
for a random-order AR. Tokens come back in grid (raster) order.

Guidance: the model runs on [cond; uncond] (GPT: the null class; AR: `fake_latent`), and each fed
token goes to both halves. The scale of step i comes from a host-side schedule, `cfg_scales`.

Known tokens (editing): where the grid position of step i is known, its known token is fed and kept
instead of the sampled one (still computed: shapes are static). Without known tokens the mask is all
False, so editing and plain sampling are the same program.

Randomness: step i draws from keys[i], one key per token step, split from `rng` or given; the
DiffLoss head's noise can also be given as an array. The same rng gives the same tokens.
"""
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from marjax.blocks.attention import KVCache, with_open_chunk
from marjax.heads.diffusion import respaced_step_count
from marjax.heads.softmax import cfg_logits, sample_logits
from marjax.models.ar import AR, init_decode_caches
from marjax.models.gpt import GPT, init_caches
from marjax.models.masking import raster_orders, sample_orders, sampling_schedule

Caches = Any  # a pytree of KV caches, carried through the scan
Prefill = Callable[[Caches], tuple[jax.Array, Caches]]
Step = Callable[[jax.Array, jax.Array, Caches], tuple[jax.Array, Caches]]
Choose = Callable[[jax.Array, jax.Array], jax.Array]

# Samplers' caches in chunks of this many positions or more (`decode_chunks`): see KVCache.
DECODE_CHUNK_LEN = 16
MAX_DECODE_CHUNKS = 4


def decode(prefill: Prefill, step: Step, choose: Choose, caches: Caches, targets: jax.Array, tokens: jax.Array,
           known_mask: jax.Array, copies: int) -> jax.Array:
    """The shared loop: prefill, then `lax.scan` over steps 0..N-2, then the last token.

    Args:
      prefill: caches -> (out, caches); writes cache row 0 and returns out (copies*B, ...), which
        conditions the token of step 0.
      step: (token (copies*B, ...), i, caches) -> (out, caches): feeds the token of step i (traced
        int scalar) as cache row i + 1 and returns the output that conditions the token of step i + 1.
      choose: (out, i) -> (B, ...) the token of step i, in the dtype of `tokens`.
      caches: the empty KV caches `prefill` starts from. In chunks (`KVCache`), the steps run as one
        scan per chunk, with that chunk open: each step reads only the chunks filled so far.
      targets: (B, N) int, the grid position each step generates (a permutation per sample).
      tokens: (B, N, ...) in grid order: the known tokens where `known_mask`, anything elsewhere.
      known_mask: (B, N) bool over the grid, True = known.
      copies: 2 with guidance (the model's batch is [cond; uncond]), else 1.
    Returns:
      (B, N, ...) tokens in grid order.
    """
    rows = jnp.arange(targets.shape[0])
    num_steps = targets.shape[1]

    def place(out: jax.Array, i: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        target = targets[:, i]
        known = known_mask[rows, target].reshape((-1,) + (1,) * (tokens.ndim - 2))
        token = jnp.where(known, tokens[rows, target], choose(out, i))
        return token, tokens.at[rows, target].set(token)

    def body(carry, i):
        out, caches, tokens = carry
        token, tokens = place(out, i, tokens)
        out, caches = step(jnp.concatenate([token] * copies), i, caches)
        return (out, caches, tokens), None

    out, caches = prefill(caches)
    # The last token feeds nothing back: it is chosen after the scans, so no step runs past the caches.
    for chunk, first, stop in _chunk_segments(num_steps - 1, caches):
        (out, caches, tokens), _ = jax.lax.scan(body, (out, with_open_chunk(caches, chunk), tokens),
                                                jnp.arange(first, stop))
    return place(out, jnp.int32(num_steps - 1), tokens)[1]


def _chunk_segments(num_steps: int, caches: Caches) -> list[tuple[int, int, int]]:
    """(chunk, first step, stop step) of each scan of `decode`: step i writes cache row i + 1, which
    lies in chunk (i + 1) // chunk_len of the caches (one scan when they hold no `KVCache`)."""
    kv_caches = [c for c in jax.tree.leaves(caches, is_leaf=lambda c: isinstance(c, KVCache))
                 if isinstance(c, KVCache)]
    chunk_len = kv_caches[0].chunk_len if kv_caches else num_steps + 1
    bounds = range(chunk_len - 1, num_steps, chunk_len)
    starts = [0, *bounds]
    stops = [*bounds, num_steps]
    return [(chunk, first, stop) for chunk, (first, stop) in enumerate(zip(starts, stops)) if stop > first]


def decode_chunks(max_len: int) -> int:
    """How many chunks the samplers' KV caches of `max_len` positions take: one per
    DECODE_CHUNK_LEN positions, at most MAX_DECODE_CHUNKS (each is one more scan body to compile)."""
    return max(1, min(MAX_DECODE_CHUNKS, max_len // DECODE_CHUNK_LEN))


def softmax_choice(logits_of: Callable[[jax.Array], jax.Array], keys: jax.Array, scales: jax.Array, guided: bool,
                   cfg_interval: jax.Array, temperature: jax.Array, top_k: int, top_p: ArrayLike) -> Choose:
    """`choose` for a softmax head, LlamaGen's order: CFG on the logits first (uncond + s (cond -
    uncond), cond alone for token indices past cfg_interval + 1), then / max(temperature, 1e-5),
    top-k, top-p and a categorical draw from keys[i]. logits_of: out (copies*B, ...) -> (copies*B, V)."""

    def choose(out: jax.Array, i: jax.Array) -> jax.Array:
        logits = logits_of(out)
        if guided:
            cond, uncond = jnp.split(logits, 2)
            logits = cfg_logits(cond, uncond, scales[i], i, cfg_interval)
        return sample_logits(keys[i], logits, temperature, top_k, top_p)

    return choose


def cfg_scales(num_tokens: int, cfg: float, schedule: str) -> jax.Array:
    """(num_tokens,) guidance scale per step. "constant": cfg at every step (LlamaGen). "linear": MAR's
    (Muse's) schedule 1 + (cfg - 1) (N - mask_len) / N as MAR's sampler computes it with num_iter = N,
    where it predicts one token per step: mask_len = N - 1 - i after step i, clamped to >= 1, so
    s_i = 1 + (cfg - 1) (i + 1) / N, except the last step's (N - 1) / N."""
    return sampling_schedule(num_tokens, num_tokens).cfg_scales(cfg, schedule)


def generate_codes(model: GPT, params: dict, labels: ArrayLike, rng: jax.Array, *, cfg: float = 1.0,
                   cfg_schedule: str = "constant", cfg_interval: int = -1, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0, keys: jax.Array | None = None, known_codes: ArrayLike | None = None,
                   known_mask: ArrayLike | None = None, cache_chunks: int | None = None) -> jax.Array:
    """Samples VQ codes with LlamaGen's c2i GPT, in raster order.

    Args:
      model, params: the GPT and its params.
      labels: (B,) int class labels. rng: PRNG key, split into `keys` when those are not given.
      cfg: guidance scale; 1.0 runs no unconditional half (guidance needs the null class,
        class_dropout > 0). cfg_schedule: "constant" (LlamaGen) or "linear" (`cfg_scales`).
      cfg_interval: LlamaGen's: -1 guides every token; else token indices > cfg_interval + 1 use the
        cond logits alone (the first token is always guided).
      temperature, top_k (0 = off), top_p (1.0 = off): LlamaGen's sampling, after guidance.
      keys: optional (N,) PRNG keys; step i (the code at grid position i) draws from keys[i].
      known_codes: optional (B, N) int codes kept where known_mask (B, N) bool is True; N = grid_size^2.
      cache_chunks: the KV caches' chunks (`decode`; None: `decode_chunks`); the codes do not depend on it.
    Returns:
      (B, N) int32 codes in raster order.
    """
    labels = _labels(labels)
    batch, num_tokens = labels.shape[0], model.seq_len
    guided = cfg != 1.0
    if guided and model.class_dropout <= 0:
        raise ValueError("guidance needs the GPT's null class (class_dropout > 0)")
    keys = _step_keys(keys, rng, num_tokens)
    known_codes, known_mask = _known(known_codes, known_mask, (batch, num_tokens), jnp.int32)
    program = _gpt_program(model, batch, guided, _top_k(top_k), top_p < 1.0,
                           _cache_chunks(cache_chunks, 1 + num_tokens))
    return program(params, labels, keys, cfg_scales(num_tokens, cfg, cfg_schedule), jnp.int32(cfg_interval),
                   jnp.float32(temperature), jnp.float32(top_p), known_codes, known_mask)


@functools.lru_cache(maxsize=32)
def _gpt_program(model: GPT, batch: int, guided: bool, top_k: int, filter_top_p: bool, cache_chunks: int):
    """One jitted GPT sampler per static setting; scales, interval, temperature and top_p are traced."""

    def run(params, labels, keys, scales, cfg_interval, temperature, top_p, known_codes, known_mask):
        variables = {"params": params}
        copies = 2 if guided else 1
        if guided:
            labels = jnp.concatenate([labels, jnp.full_like(labels, model.num_classes)])

        def prefill(caches):
            return model.apply(variables, labels, caches, method=GPT.prefill)

        def step(codes, i, caches):  # the code of grid position i sits at sequence position i + 1
            return model.apply(variables, codes, i + 1, caches, method=GPT.decode)

        choose = softmax_choice(lambda logits: logits, keys, scales, guided, cfg_interval, temperature, top_k,
                                top_p if filter_top_p else 1.0)
        caches = init_caches(model, copies * batch, model.dtype, cache_chunks)
        return decode(prefill, step, choose, caches, raster_orders(batch, model.seq_len), known_codes, known_mask,
                      copies)

    return jax.jit(run)


def generate_ar(model: AR, params: dict, labels: ArrayLike, rng: jax.Array, *, orders: ArrayLike | None = None,
                cfg: float = 1.0, cfg_schedule: str = "linear", cfg_interval: int = -1, temperature: float = 1.0,
                top_k: int = 0, top_p: float = 1.0, num_diffusion_steps: int | str = 100, clip_denoised: float = 0.0,
                keys: jax.Array | None = None, noise: jax.Array | None = None, known_tokens: ArrayLike | None = None,
                known_mask: ArrayLike | None = None, cache_chunks: int | None = None) -> jax.Array:
    """Samples tokens with a causal AR baseline (either head, either order).

    Args:
      model, params: the AR and its params.
      labels: (B,) int class labels. rng: PRNG key, split into the orders and the step keys.
      orders: optional (B, N) int generation orders (permutations of the grid positions); by default
        drawn from rng for a random-order model, raster for a raster model (which can only predict
        the next grid position).
      cfg: guidance scale (1.0 = none; the uncond half uses `fake_latent`). cfg_schedule: "linear"
        (MAR's, which the paper's Table 1 uses) or "constant" (`cfg_scales`).
      cfg_interval, top_k, top_p: the softmax head's, as `generate_codes`; the DiffLoss head takes
        none of them.
      temperature: softmax: divides the logits; DiffLoss: scales the reverse process's noise.
      num_diffusion_steps, clip_denoised: the DiffLoss head's reverse process (`DiffLoss.sample`).
      keys: optional (N,) PRNG keys; step i draws from keys[i] (DiffLoss: the noise of its diffusion
        step j is normal(fold_in(keys[i], j), (B, token_dim))).
      noise: optional (N, steps + 1, B, token_dim) (steps: `respaced_step_count(num_diffusion_steps)`) noise of the DiffLoss
        head replacing those draws: [i, 0] starts step i's reverse process, [i, j] is added at its j-th step.
      known_tokens: optional (B, N, token_dim) float (DiffLoss) or (B, N) int codes (softmax) in grid
        order, kept where known_mask (B, N) bool is True. They are fed at their step of the order, so
        the tokens generated before them do not see them; a random-order model sees them all when
        the caller puts them first in `orders`.
      cache_chunks: the KV caches' chunks (`decode`; None: `decode_chunks`); the tokens do not depend on it.
    Returns:
      (B, N, token_dim) float32 tokens (DiffLoss) or (B, N) int32 codes (softmax), in grid order.
    """
    labels = _labels(labels)
    batch, num_tokens = labels.shape[0], model.seq_len
    softmax = model.head == "softmax"
    if not softmax and (cfg_interval != -1 or top_k != 0 or top_p < 1.0):
        raise ValueError("cfg_interval, top_k and top_p belong to the softmax head; this AR has a DiffLoss head")
    if softmax and noise is not None:
        raise ValueError("noise belongs to the DiffLoss head; give the softmax head's draws as keys")
    orders_key, steps_key = jax.random.split(rng)
    if orders is None:
        orders = (sample_orders(orders_key, batch, num_tokens) if model.order == "random"
                  else raster_orders(batch, num_tokens))
    orders = jnp.asarray(orders, jnp.int32)
    if orders.shape != (batch, num_tokens):
        raise ValueError(f"orders must be (B, N) = {(batch, num_tokens)}, got {orders.shape}")
    keys = _step_keys(keys, steps_key, num_tokens)
    noise_shape = (num_tokens, respaced_step_count(num_diffusion_steps) + 1, batch, model.token_dim)
    if noise is not None and noise.shape != noise_shape:
        raise ValueError(f"noise must be (N, respaced steps + 1, B, token_dim) = {noise_shape}, got {noise.shape}")
    token_shape = (batch, num_tokens) if softmax else (batch, num_tokens, model.token_dim)
    known_tokens, known_mask = _known(known_tokens, known_mask, token_shape, jnp.int32 if softmax else jnp.float32)
    # The unused settings of the other head are normalised so they do not make new programs.
    program = _ar_program(model, batch, cfg != 1.0, _top_k(top_k) if softmax else 0, softmax and top_p < 1.0,
                          0 if softmax else str(num_diffusion_steps), 0.0 if softmax else float(clip_denoised),
                          _cache_chunks(cache_chunks, num_tokens))
    return program(params, labels, orders, keys, cfg_scales(num_tokens, cfg, cfg_schedule), jnp.int32(cfg_interval),
                   jnp.float32(temperature), jnp.float32(top_p), noise, known_tokens, known_mask)


@functools.lru_cache(maxsize=32)
def _ar_program(model: AR, batch: int, guided: bool, top_k: int, filter_top_p: bool, num_diffusion_steps: int | str,
                clip_denoised: float, cache_chunks: int):
    """One jitted AR sampler per static setting; orders, scales, temperature and top_p are traced."""

    def run(params, labels, orders, keys, scales, cfg_interval, temperature, top_p, noise, known_tokens, known_mask):
        variables = {"params": params}
        copies = 2 if guided else 1
        drop = jnp.arange(copies * batch) >= batch  # the second half, if any, is the uncond one
        labels, model_orders = jnp.tile(labels, copies), jnp.tile(orders, (copies, 1))

        def prefill(caches):
            return model.apply(variables, labels, drop, model_orders, caches, method=AR.prefill)

        def step(token, i, caches):
            return model.apply(variables, token, i, model_orders, caches, method=AR.decode_step)

        if model.head == "softmax":
            logits_of = functools.partial(model.apply, variables, method=AR.logits)
            choose = softmax_choice(logits_of, keys, scales, guided, cfg_interval, temperature, top_k,
                                    top_p if filter_top_p else 1.0)
        else:
            def choose(z, i):
                def draw(j):  # j = 0: the starting noise; j >= 1: the noise of diffusion step j
                    if noise is not None:
                        return noise[i, j]
                    return jax.random.normal(jax.random.fold_in(keys[i], j), (batch, model.token_dim))

                return model.apply(variables, z, draw, temperature, scales[i] if guided else None,
                                   num_diffusion_steps, clip_denoised, method=AR.sample_tokens)

        caches = init_decode_caches(model, copies * batch, cache_chunks)
        return decode(prefill, step, choose, caches, orders, known_tokens, known_mask, copies)

    return jax.jit(run)


def _labels(labels: ArrayLike) -> jax.Array:
    labels = jnp.asarray(labels, jnp.int32)
    if labels.ndim != 1:
        raise ValueError(f"labels must be (B,), got shape {labels.shape}")
    return labels


def _step_keys(keys: jax.Array | None, rng: jax.Array, num_tokens: int) -> jax.Array:
    """The given keys, checked (a traced index past their end would clamp silently), or rng split."""
    if keys is None:
        return jax.random.split(rng, num_tokens)
    if keys.shape != (num_tokens,):
        raise ValueError(f"keys must be (N,) = ({num_tokens},) PRNG keys, got shape {keys.shape}")
    return keys


def _cache_chunks(chunks: int | None, max_len: int) -> int:
    """The given chunk count, checked, or `decode_chunks(max_len)` for None."""
    if chunks is None:
        return decode_chunks(max_len)
    if int(chunks) != chunks or not 1 <= chunks <= max_len:
        raise ValueError(f"cache_chunks must be an int in 1..{max_len} (the caches' positions), got {chunks}")
    return int(chunks)


def _top_k(top_k: int) -> int:
    if int(top_k) != top_k or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k}")
    return int(top_k)


def _known(tokens: ArrayLike | None, mask: ArrayLike | None, shape: tuple[int, ...],
           dtype: Any) -> tuple[jax.Array, jax.Array]:
    """(tokens, mask) as `decode` takes them: zeros and an all-False mask when nothing is known (one
    program serves both)."""
    if (tokens is None) != (mask is None):
        raise ValueError("known tokens and known_mask come together")
    if mask is None:
        return jnp.zeros(shape, dtype), jnp.zeros(shape[:2], bool)
    tokens, mask = jnp.asarray(tokens, dtype), jnp.asarray(mask, bool)
    if tokens.shape != shape or mask.shape != shape[:2]:
        raise ValueError(f"known tokens must be {shape} and known_mask {shape[:2]}, got {tokens.shape} and "
                         f"{mask.shape}")
    return tokens, mask
