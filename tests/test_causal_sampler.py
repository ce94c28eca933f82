"""The causal sampler: one program per setting, the same tokens as a naive sampler that reruns the
full causal forward at every step, CFG by batch doubling (scale 1 = none, LlamaGen's cfg_interval),
top-k 1 = argmax, known tokens kept; for VQ-GPT and for the AR baselines (both heads, both orders)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.heads.softmax import cfg_logits, sample_logits
from marjax.models.ar import AR, HEADS, ORDERS
from marjax.models.ar import init_params as ar_init_params
from marjax.models.gpt import GPT
from marjax.models.gpt import init_params as gpt_init_params
from marjax.models.masking import raster_orders, sample_orders
from marjax.sampling import causal

B, N = 2, 16  # a 4x4 grid
LABELS = jnp.array([3, 7])
GPT_TINY = dict(vocab_size=64, grid_size=4, num_classes=10, width=64, depth=2, num_heads=2, multiple_of=32)
AR_TINY = dict(latent_size=4, latent_channels=4, width=32, depth=2, num_heads=4, num_classes=10, vocab_size=24,
               diffloss_depth=1, diffloss_width=32)
# The GPT's main setting: guided, every filter on. Each call with these static values reuses one program.
GPT_SETTING = dict(cfg=3.0, top_k=8, top_p=0.9, temperature=1.2)
SOFTMAX_SETTING = dict(cfg=2.5, top_k=5, top_p=0.95, temperature=1.1, cfg_interval=8)
DIFFLOSS_SETTING = dict(cfg=2.5, temperature=0.9, num_diffusion_steps=3)


def random_params(init_params, scale: float) -> dict:
    """Params of the shapes `init_params` makes, drawn on the host (a compiled init costs about as
    much as a sampler): norm scales 1 + noise, every other leaf noise, so the zero-initialised
    output layers give informative logits."""
    shapes = jax.eval_shape(init_params, jax.random.key(0))
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray((path[-1].key == "scale") + scale * rng.standard_normal(leaf.shape),
                                       jnp.float32), shapes)


def step_keys(seed: int) -> jax.Array:
    return jax.random.split(jax.random.key(seed), N)


def linear_scales(cfg: float) -> np.ndarray:
    """MAR's linear schedule at one token per step, written out: 1 + (cfg - 1)(i + 1)/N, the last (N - 1)/N."""
    done = np.minimum(np.arange(1, N + 1), N - 1)
    return 1.0 + (cfg - 1.0) * done / N


def softmax_token(logits: jax.Array, key: jax.Array, i: int, scale: float, cfg_interval: int = -1,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """One step of the naive sampler: logits (2B, V) = [cond; uncond] -> (B,) codes."""
    guided = cfg_logits(logits[:B], logits[B:], scale, i, cfg_interval)
    return sample_logits(key, guided, temperature, top_k, top_p)


# --- VQ-GPT ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt():
    model = GPT(**GPT_TINY)
    return model, random_params(functools.partial(gpt_init_params, model), 0.1)


def gpt_sample(gpt, seed: int = 5, params: dict | None = None, **overrides) -> np.ndarray:
    model, default_params = gpt
    keys = overrides.pop("keys", step_keys(seed))
    codes = causal.generate_codes(model, default_params if params is None else params, LABELS, jax.random.key(0),
                                  keys=keys, **{**GPT_SETTING, **overrides})
    return np.asarray(codes)


def naive_codes(gpt, keys: jax.Array, cfg: float, **sampling) -> np.ndarray:
    """Reruns the full forward for every code, with no cache (one compiled loop)."""
    model, params = gpt
    labels = jnp.concatenate([LABELS, jnp.full((B,), model.num_classes)])  # [cond; uncond]

    def next_code(i, codes):  # codes at i and after do not reach logits[:, i] (causal)
        logits = model.apply({"params": params}, jnp.tile(codes, (2, 1)), labels)[:, i]
        return codes.at[:, i].set(softmax_token(logits, keys[i], i, cfg, **sampling))

    return np.asarray(jax.jit(jax.lax.fori_loop, static_argnums=(0, 1, 2))(0, N, next_code,
                                                                         jnp.zeros((B, N), jnp.int32)))


def test_gpt_same_rng_same_codes_and_rng_matters(gpt):
    a, b = gpt_sample(gpt, keys=None), gpt_sample(gpt, keys=None)
    assert a.shape == (B, N) and a.dtype == np.int32 and ((a >= 0) & (a < GPT_TINY["vocab_size"])).all()
    np.testing.assert_array_equal(a, b)
    model, params = gpt
    other = causal.generate_codes(model, params, LABELS, jax.random.key(1), **GPT_SETTING)
    assert (a != np.asarray(other)).any()


def test_gpt_cached_sampler_equals_the_naive_sampler(gpt):
    setting = dict(temperature=1.2, top_k=8, top_p=0.9, cfg_interval=6)
    expected = naive_codes(gpt, step_keys(5), 3.0, **setting)
    np.testing.assert_array_equal(gpt_sample(gpt, cfg_interval=6), expected)


def test_gpt_one_program_for_every_call_of_a_setting(gpt):
    """rng, keys, scale, schedule, interval, temperature, top_p and known tokens are all traced."""
    program = causal._gpt_program(gpt[0], B, True, GPT_SETTING["top_k"], True, causal.decode_chunks(1 + N))
    gpt_sample(gpt)
    built = causal._gpt_program.cache_info().misses
    known = dict(known_codes=jnp.ones((B, N), jnp.int32), known_mask=jnp.eye(B, N, dtype=bool))
    for overrides in [dict(seed=6), dict(cfg=1.5, temperature=0.7, top_p=0.5), dict(cfg_interval=3),
                      dict(cfg_schedule="linear"), dict(keys=None), known]:
        gpt_sample(gpt, **overrides)
    assert causal._gpt_program.cache_info().misses == built and program._cache_size() == 1


def test_gpt_codes_do_not_depend_on_the_cache_chunks(gpt):
    """Caches in 3 chunks (6 positions each): 3 scans, each reading the chunks filled so far."""
    np.testing.assert_array_equal(gpt_sample(gpt, cache_chunks=3), gpt_sample(gpt))
    with pytest.raises(ValueError, match="cache_chunks must be an int in 1..17"):
        gpt_sample(gpt, cache_chunks=18)


def test_decode_traces_each_callable_once_not_per_token():
    """The loop itself, on a toy model (out = the last fed token): one trace of `step` for all N
    tokens, `choose` in the scan body and once for the last token; tokens land at their targets."""
    traces = {"prefill": 0, "step": 0, "choose": 0}

    def counted(name, fn):
        def wrapper(*args):
            traces[name] += 1
            return fn(*args)
        return wrapper

    prefill = counted("prefill", lambda caches: (jnp.zeros((B,), jnp.int32), caches))
    step = counted("step", lambda token, i, caches: (token, caches + 1))
    choose = counted("choose", lambda out, i: out + i)  # token i = the sum of the steps so far
    targets = jnp.stack([jnp.arange(N), jnp.arange(N)[::-1]]).astype(jnp.int32)
    run = jax.jit(lambda targets, known, mask: causal.decode(prefill, step, choose, jnp.int32(0), targets, known,
                                                             mask, 1))
    free = jnp.zeros((B, N), jnp.int32), jnp.zeros((B, N), bool)
    for _ in range(3):
        out = np.asarray(run(targets, *free))
    assert traces == {"prefill": 1, "step": 1, "choose": 2}
    triangular = np.cumsum(np.arange(N))
    np.testing.assert_array_equal(out, np.stack([triangular, triangular[::-1]]))
    # A known token is fed instead of the chosen one, so the tokens after it build on it.
    mask = jnp.zeros((B, N), bool).at[0, 2].set(True)
    out = np.asarray(run(targets, jnp.full((B, N), 100, jnp.int32), mask))
    np.testing.assert_array_equal(out[0], np.where(np.arange(N) < 2, triangular, 100 + triangular - 3))


def test_gpt_guidance_scale_one_equals_no_guidance(gpt):
    model, params = gpt
    unguided = gpt_sample(gpt, cfg=1.0)
    program = causal._gpt_program(model, B, True, GPT_SETTING["top_k"], True, causal.decode_chunks(1 + N))
    guided = program(params, LABELS, step_keys(5), jnp.ones((N,)), jnp.int32(-1), jnp.float32(1.2),
                     jnp.float32(0.9), jnp.zeros((B, N), jnp.int32), jnp.zeros((B, N), bool))
    np.testing.assert_array_equal(guided, unguided)
    assert (gpt_sample(gpt) != unguided).any()


def test_gpt_after_the_cfg_interval_the_uncond_half_no_longer_matters(gpt):
    """The first interval + 2 codes are given (so both runs feed the same codes); then only the null
    class's embedding changes, which reaches the uncond half alone."""
    model, params = gpt
    interval = 3
    mask = jnp.broadcast_to(jnp.arange(N) < interval + 2, (B, N))
    known = dict(known_codes=jnp.full((B, N), 5, jnp.int32), known_mask=mask)
    table = params["cls_embedding"]["embedding"]
    other_null = {**params, "cls_embedding": {"embedding": table.at[model.num_classes].add(1.0)}}
    for cfg_interval, same in [(interval, True), (-1, False)]:
        a = gpt_sample(gpt, cfg_interval=cfg_interval, **known)
        b = gpt_sample(gpt, params=other_null, cfg_interval=cfg_interval, **known)
        assert np.array_equal(a, b) == same


def test_gpt_top_k_one_is_argmax(gpt):
    """Every code is the argmax of the causal forward's logits given the codes before it."""
    model, params = gpt
    codes = gpt_sample(gpt, 1, cfg=1.0, top_k=1, top_p=1.0)
    np.testing.assert_array_equal(gpt_sample(gpt, 2, cfg=1.0, top_k=1, top_p=1.0), codes)
    logits = jax.jit(model.apply)({"params": params}, codes, LABELS)
    np.testing.assert_array_equal(codes, np.argmax(logits, axis=-1))


def test_gpt_known_codes_come_back_and_steer_the_rest(gpt):
    known_codes = jax.random.randint(jax.random.key(3), (B, N), 0, GPT_TINY["vocab_size"])
    mask = jnp.zeros((B, N), bool).at[0, :4].set(True).at[1, 9].set(True)  # a row of the grid; one code
    free = gpt_sample(gpt)
    edited = gpt_sample(gpt, known_codes=known_codes, known_mask=mask)
    np.testing.assert_array_equal(edited[mask], np.asarray(known_codes)[mask])
    np.testing.assert_array_equal(edited[1, :9], free[1, :9])  # before the known code: untouched
    assert (edited[0, 4:] != free[0, 4:]).any() and (edited[1, 10:] != free[1, 10:]).any()
    with pytest.raises(ValueError, match="come together"):
        gpt_sample(gpt, known_codes=known_codes)


# --- The AR baselines -----------------------------------------------------------------------------

class Cell:
    """One (order, head) AR with random params, fixed orders and fixed draws."""

    def __init__(self, order: str, head: str):
        self.model = model = AR(**AR_TINY, order=order, head=head)
        self.params = random_params(functools.partial(ar_init_params, model), 0.05)
        self.orders = raster_orders(B, N) if order == "raster" else sample_orders(jax.random.key(4), B, N)
        self.softmax = head == "softmax"
        if self.softmax:
            self.setting = dict(SOFTMAX_SETTING, keys=step_keys(5))
        else:
            steps = DIFFLOSS_SETTING["num_diffusion_steps"]
            self.setting = dict(DIFFLOSS_SETTING, noise=jax.random.normal(jax.random.key(5),
                                                                          (N, steps + 1, B, model.token_dim)))

    def sample(self, **overrides) -> np.ndarray:
        setting = {"orders": self.orders, **self.setting, **overrides}
        return np.asarray(causal.generate_ar(self.model, self.params, LABELS, jax.random.key(0), **setting))

    def naive(self) -> np.ndarray:
        """Reruns the full forward for every token, with no cache (one compiled loop)."""
        model, setting, variables = self.model, self.setting, {"params": self.params}
        scales = jnp.asarray(linear_scales(setting["cfg"]), jnp.float32)
        drop = jnp.arange(2 * B) >= B

        def next_token(i, tokens):  # tokens generated at i and after do not reach z[:, i] (causal)
            z = model.apply(variables, jnp.tile(tokens, (2,) + (1,) * (tokens.ndim - 1)), jnp.tile(LABELS, 2),
                            jnp.tile(self.orders, (2, 1)), drop, method=AR.condition)[:, i]
            if self.softmax:
                token = softmax_token(model.apply(variables, z, method=AR.logits), setting["keys"][i], i, scales[i],
                                      setting["cfg_interval"], setting["temperature"], setting["top_k"],
                                      setting["top_p"])
            else:
                token = model.apply(variables, z, lambda j: setting["noise"][i, j], setting["temperature"],
                                    scales[i], setting["num_diffusion_steps"], method=AR.sample_tokens)
            return tokens.at[jnp.arange(B), self.orders[:, i]].set(token)

        tokens = jnp.zeros((B, N), jnp.int32) if self.softmax else jnp.zeros((B, N, model.token_dim))
        return np.asarray(jax.jit(jax.lax.fori_loop, static_argnums=(0, 1, 2))(0, N, next_token, tokens))


CELLS = [(order, head) for order in ORDERS for head in HEADS]
make_cell = functools.cache(Cell)  # the tests below share the cells (and their compiled programs)


@pytest.fixture(params=CELLS, ids=["-".join(c) for c in CELLS])
def cell(request) -> Cell:
    return make_cell(*request.param)


def test_ar_cached_sampler_equals_the_naive_sampler(cell):
    out = cell.sample()
    if cell.softmax:
        assert out.shape == (B, N) and out.dtype == np.int32
        np.testing.assert_array_equal(out, cell.naive())
    else:
        assert out.shape == (B, N, cell.model.token_dim) and out.dtype == np.float32 and np.isfinite(out).all()
        # Cached attention rounds differently, and the untrained reverse process amplifies it.
        np.testing.assert_allclose(out, cell.naive(), rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(cell.sample(), out)


@pytest.fixture
def random_softmax() -> Cell:
    return make_cell("random", "softmax")


@pytest.fixture
def raster_diffloss() -> Cell:
    return make_cell("raster", "diffloss")


def test_ar_tokens_do_not_depend_on_the_cache_chunks(random_softmax):
    np.testing.assert_array_equal(random_softmax.sample(cache_chunks=4), random_softmax.sample())


def test_ar_same_rng_same_tokens_and_drawn_orders(random_softmax):
    cell = random_softmax
    draw = functools.partial(causal.generate_ar, cell.model, cell.params, LABELS, **SOFTMAX_SETTING)
    a, b, c = (np.asarray(draw(jax.random.key(seed))) for seed in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_ar_diffloss_guidance_scale_one_equals_no_guidance(raster_diffloss):
    cell = raster_diffloss
    program = causal._ar_program(cell.model, B, True, 0, False, DIFFLOSS_SETTING["num_diffusion_steps"], False,
                                 causal.decode_chunks(N))
    guided = program(cell.params, LABELS, cell.orders, step_keys(5), jnp.ones((N,)), jnp.int32(-1),
                     jnp.float32(0.9), jnp.float32(1.0), cell.setting["noise"], jnp.zeros((B, N, 4)),
                     jnp.zeros((B, N), bool))
    unguided = cell.sample(cfg=1.0)
    np.testing.assert_allclose(guided, unguided, rtol=1e-4, atol=1e-4)
    assert not np.allclose(cell.sample(), unguided, rtol=1e-2)


def test_ar_known_tokens_come_back_and_steer_the_rest(random_softmax):
    """Random order: the known positions are fed at their steps; the ones generated later see them."""
    cell = random_softmax
    known = jax.random.randint(jax.random.key(3), (B, N), 0, AR_TINY["vocab_size"])
    mask = jnp.zeros((B, N), bool).at[:, :4].set(True)
    free, edited = cell.sample(), cell.sample(known_tokens=known, known_mask=mask)
    np.testing.assert_array_equal(edited[mask], np.asarray(known)[mask])
    rank = np.argsort(np.asarray(cell.orders), axis=1)  # the step that generates each grid position
    first_known = np.where(np.asarray(mask), rank, N).min(axis=1, keepdims=True)
    before = rank < first_known
    np.testing.assert_array_equal(edited[before], free[before])
    assert (edited[~before & ~np.asarray(mask)] != free[~before & ~np.asarray(mask)]).any()


def test_ar_head_settings_are_checked(raster_diffloss, random_softmax):
    with pytest.raises(ValueError, match="softmax head"):
        raster_diffloss.sample(top_k=3)
    with pytest.raises(ValueError, match="DiffLoss head"):
        random_softmax.sample(noise=jnp.zeros((N, 4, B, 4)))
    with pytest.raises(ValueError, match="noise must be"):
        raster_diffloss.sample(noise=jnp.zeros((N, 2, B, 4)))
    with pytest.raises(ValueError, match="keys must be"):
        random_softmax.sample(keys=step_keys(0)[:3])
    with pytest.raises(ValueError, match="orders must be"):
        random_softmax.sample(orders=jnp.zeros((B, N - 1), jnp.int32))
