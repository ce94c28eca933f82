"""VAR's next-scale sampler: one program per setting; its codes are the draws from the teacher-forced
block-causal logits of the codes before them under VAR's CFG (t = cfg k / (K - 1); cfg 0 = none, no
unconditional half) and top-k/p; greedy = argmax; more_smooth; zero-shot editing; and parity with the
reference's own samplers.

All of it runs on one tiny VAR with random weights, the reference's: `fixtures/var_tiny_reference.npz`
(V 64, Cvae 8, patch_nums (1, 2, 3, 4), width 64, depth 2, 4 heads, 10 classes, every weight moved off
VAR's init; see tests/test_var_parity.py). `fixtures/var_sampler_tiny_reference.npz` holds numbers only,
made by running FoundationVision/VAR @78b9539 outside this project on those weights:
`autoregressive_infer_cfg` greedy (top_k=1, so torch's generator does not matter) at cfg 1.5,
demo_zero_shot_edit.ipynb's editing sampler (greedy, cfg 1.5, the demo's inpainting box), its
`replace_embedding` masks for a few edit masks, and `sample_with_top_k_top_p_`'s filtering of random
logits. Its `config_json` documents every array.
"""
import functools
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.models.var import VAR
from marjax.models.var_torch_layout import params_from_torch_state
from marjax.sampling import next_scale
from marjax.tokenizers.msvq import MultiScaleQuantizer
from marjax.tokenizers.msvq_torch_layout import params_from_torch_state as quantizer_from_torch_state
from marjax.tokenizers.msvq_vae import VQVAE, init_vqvae_params
from tests.packed_fixtures import int8_grid_state, load_npz

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "var_sampler_tiny_reference.npz"
WEIGHTS = pathlib.Path(__file__).parent / "fixtures" / "var_tiny_reference.npz"
PATCH_NUMS = (1, 2, 3, 4)
K, B, V = len(PATCH_NUMS), 3, 64
LABELS = np.array([3, 7, 10])  # the fixture's; 10 is the null class
MODEL = VAR(vocab_size=V, code_dim=8, patch_nums=PATCH_NUMS, num_classes=10, width=64, depth=2, num_heads=4)
# Only the quantizer's params are given (all the sampler reads); the rest of this VQVAE is for shapes.
VQ = VQVAE(ch=32, ch_mult=(1, 2), num_res_blocks=1, code_dim=8, codebook_size=V, patch_nums=PATCH_NUMS)
# The main setting: guided, both filters on. Calls with any cfg > 0 and top_p reuse one program.
SETTING = dict(cfg=1.5, top_k=8, top_p=0.9)
# Greedy in the main setting's program: top-p of 1e-9 (threshold float32(1 - 1e-9) = 1) removes all
# but the largest logit, as top_k=1 would (a program of its own: the tests keep to three).
GREEDY = dict(top_k=8, top_p=1e-9)


@pytest.fixture(scope="module")
def ref():
    return load_npz(FIXTURE)


@pytest.fixture(scope="module")
def tiny():
    """(params, vae_params) of the reference weights."""
    weights = load_npz(WEIGHTS)
    codes = [jnp.zeros((1, p, p), jnp.int32) for p in PATCH_NUMS]
    shapes = jax.eval_shape(lambda: MultiScaleQuantizer(V, 8, PATCH_NUMS).init(
        jax.random.key(0), codes, method="latents_from_codes"))
    state = {f"quantize.{k}": v for k, v in int8_grid_state(weights, "quant/").items()}
    vae_params = quantizer_from_torch_state(state, {"quantizer": nn.unbox(shapes["params"])})
    return params_from_torch_state(int8_grid_state(weights), MODEL), vae_params


def scale_keys(seed: int) -> jax.Array:
    return jax.random.split(jax.random.key(seed), K)


def sample(tiny, seed: int = 5, **overrides) -> tuple[list[np.ndarray], np.ndarray]:
    params, vae_params = tiny
    keys = overrides.pop("keys", scale_keys(seed))
    codes, f_hat = next_scale.generate_var(MODEL, params, VQ, vae_params, LABELS, jax.random.key(0), keys=keys,
                                           **{**SETTING, **overrides})
    return [np.asarray(c) for c in codes], np.asarray(f_hat)


def quantizer(vae_params, method, *args):
    return VQ.apply({"params": vae_params}, *args, method=lambda module, *a: getattr(module.quantizer, method)(*a))


@jax.jit
def teacher_forced_logits(params, vae_params, codes):
    """The block-causal forward on [labels; null class] fed the codes' teacher-forcing input: per scale
    (2B, p^2, V), the logits the codes of that scale were drawn from (later codes do not reach them)."""
    rows = jnp.concatenate([LABELS, np.full(B, MODEL.num_classes)])
    inputs = quantizer(vae_params, "teacher_forcing_input", codes)
    logits = MODEL.apply({"params": params}, rows, jnp.tile(inputs, (2, 1, 1)))
    return [logits[:, slice(*MODEL.scale_bounds(k))] for k in range(K)]


def guided(logits: jax.Array, cfg: float, k: int) -> jax.Array:
    """VAR's guidance by hand: (1 + t) cond - t uncond, t = cfg k / (K - 1)."""
    t = cfg * k / (K - 1)
    return (1 + t) * logits[:B] - t * logits[B:]


@jax.jit
def latents(vae_params, codes):
    return quantizer(vae_params, "latents_from_codes", codes)


@functools.partial(jax.jit, static_argnums=3)
def redraw(logits, keys, cfg, count, threshold):
    """Per scale (B, p^2): the draw from keys[k] among the candidates VAR's filters leave of VAR's
    guidance of the logits."""
    codes = []
    for k, x in enumerate(logits):
        values, indices = next_scale.filtered_candidates(guided(x, cfg, k), count, threshold)
        codes.append(jnp.take_along_axis(indices, next_scale.draw(keys[k], values)[..., None], axis=-1)[..., 0])
    return codes


# --- the sampler ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [1.5, 0.0])
def test_codes_are_draws_from_the_guided_filtered_teacher_forced_logits(tiny, cfg):
    """Scale k's codes = categorical(keys[k], VAR-filtered guided logits), the logits of the full
    block-causal forward on the codes drawn before: the KV cache, the next-scale inputs, the guidance
    and the filters together. cfg 0: the conditional logits alone."""
    params, vae_params = tiny
    codes, f_hat = sample(tiny, cfg=cfg)
    expected = redraw(teacher_forced_logits(params, vae_params, codes), scale_keys(5), cfg, SETTING["top_k"],
                      next_scale.top_p_threshold(SETTING["top_p"]))
    assert any((c != e.reshape(c.shape)).any() for c, e in zip(codes, redraw(
        teacher_forced_logits(params, vae_params, codes), scale_keys(6), cfg, SETTING["top_k"],
        next_scale.top_p_threshold(SETTING["top_p"]))))  # the keys matter
    for k in range(K):
        np.testing.assert_array_equal(codes[k].reshape(B, -1), expected[k], err_msg=f"scale {k}")
    np.testing.assert_allclose(f_hat, latents(vae_params, codes), rtol=1e-5, atol=1e-5)


def test_greedy_codes_are_the_argmax_of_the_guided_logits(tiny):
    params, vae_params = tiny
    codes, _ = sample(tiny, cfg=2.0, **GREEDY)
    logits = teacher_forced_logits(params, vae_params, codes)
    for k in range(K):
        np.testing.assert_array_equal(codes[k].reshape(B, -1), np.argmax(guided(logits[k], 2.0, k), -1))


def test_same_keys_same_codes_different_keys_different_codes(tiny):
    first, f_hat = sample(tiny, seed=5)
    again, f_hat_again = sample(tiny, seed=5)
    other, _ = sample(tiny, seed=6)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(f_hat, f_hat_again)
    assert any((a != b).any() for a, b in zip(first, other))
    # Without keys, rng is split into them.
    run = functools.partial(next_scale.generate_var, MODEL, *tiny[:1], VQ, tiny[1], LABELS, **SETTING)
    np.testing.assert_array_equal(run(jax.random.key(1))[0][-1], run(jax.random.key(1))[0][-1])


def test_the_host_top_k_draws_the_same_codes(tiny):
    """sample.host_top_k: numpy's top-k on the host (`heads.top_k`) gives the candidates in the same
    order, so the same keys draw the same codes, with top-p and with top-k alone."""
    for setting in (SETTING, dict(SETTING, top_p=0.0)):
        codes, f_hat = sample(tiny, **setting)
        host_codes, host_f_hat = sample(tiny, **setting, host_top_k=True)
        for a, b in zip(codes, host_codes):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(f_hat, host_f_hat)


def test_one_program_for_every_call_of_a_setting(tiny):
    """keys, rng, the guidance scale, top_p and known codes are traced: no new program or trace."""
    program = next_scale._program(MODEL, VQ, B, True, SETTING["top_k"], False, False)
    sample(tiny)
    built = next_scale._program.cache_info().misses
    known = dict(known_codes=[np.ones((B, p, p), np.int32) for p in PATCH_NUMS],
                 known_masks=[np.eye(p, dtype=bool)[None].repeat(B, 0) for p in PATCH_NUMS])
    for overrides in [dict(seed=6), dict(cfg=4.0, top_p=0.5), dict(top_p=0.0), dict(keys=None), known]:
        sample(tiny, **overrides)
    assert next_scale._program.cache_info().misses == built and program._cache_size() == 1


def test_cfg_zero_runs_no_unconditional_half(tiny):
    """cfg 0 (t = 0 at every scale) is a program on B rows; a guided one runs [labels; null] (2B rows)."""
    params, vae_params = tiny
    args = (params, vae_params["quantizer"], LABELS, scale_keys(0), np.zeros((K, 2), np.float32), np.float32(-1),
            *next_scale._known(None, None, B, PATCH_NUMS))
    flops = {guided: next_scale._program(MODEL, VQ, B, guided, 8, False, False).lower(*args).cost_analysis()["flops"]
             for guided in (True, False)}
    assert flops[False] < 0.6 * flops[True]


def test_more_smooth_mixes_codebook_rows_into_f_hat_only(tiny):
    _, vae_params = tiny
    codes, _ = sample(tiny)
    smooth_codes, smooth_f_hat = sample(tiny, more_smooth=True)
    # Scale 1 does not see f_hat: the same keys draw the same codes there; f_hat is not the codes' own.
    np.testing.assert_array_equal(smooth_codes[0], codes[0])
    assert not np.allclose(smooth_f_hat, latents(vae_params, smooth_codes), atol=1e-3)
    # Greedy: the filtered logits keep one entry, so the Gumbel-softmax of them is that code's one-hot.
    sharp, smooth = sample(tiny, **GREEDY), sample(tiny, more_smooth=True, **GREEDY)
    for a, b in zip(sharp[0], smooth[0]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(smooth[1], sharp[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("more_smooth", [False, True])
def test_editing_with_every_position_known_returns_the_known_codes(tiny, more_smooth):
    _, vae_params = tiny
    rng = np.random.default_rng(3)
    known = [rng.integers(0, V, (B, p, p)).astype(np.int32) for p in PATCH_NUMS]
    masks = next_scale.scale_masks(np.ones((B, 8, 8)), PATCH_NUMS)  # in pixels: 8 x 8 images
    codes, f_hat = sample(tiny, known_codes=known, known_masks=masks, more_smooth=more_smooth)
    for k in range(K):
        np.testing.assert_array_equal(codes[k], known[k])
    np.testing.assert_allclose(f_hat, latents(vae_params, known), rtol=1e-5, atol=1e-5)


def test_editing_keeps_the_known_half_at_every_scale(tiny):
    rng = np.random.default_rng(4)
    known = [rng.integers(0, V, (B, p, p)).astype(np.int32) for p in PATCH_NUMS]
    pixels = np.zeros((B, 8, 8)).astype(np.float32)
    pixels[:, :, :4] = 1.0  # the left half is kept
    masks = [np.asarray(m) for m in next_scale.scale_masks(pixels, PATCH_NUMS)]
    assert [int(m[0].sum()) for m in masks] == [1, 2, 3, 8]  # p 1: all known; p 3: column 0 (0.5 is not > 0.5)
    codes, _ = sample(tiny, known_codes=known, known_masks=masks)
    free, _ = sample(tiny)
    for k in range(K):
        np.testing.assert_array_equal(codes[k][masks[k]], known[k][masks[k]], err_msg=f"scale {k}")
    # The rest is drawn, conditioned on the known part.
    assert (codes[-1][~masks[-1]] != known[-1][~masks[-1]]).any() and (codes[-1] != free[-1]).any()


def test_scale_masks_of_a_pixel_mask_equal_those_of_its_token_grid():
    """A pixel mask that is constant on each last-scale token gives that token grid's masks."""
    tokens = (np.random.default_rng(0).random((2, 4, 4)) > 0.5).astype(np.float32)
    pixels = tokens.repeat(16, axis=1).repeat(16, axis=2)
    for a, b in zip(next_scale.scale_masks(pixels, PATCH_NUMS), next_scale.scale_masks(tokens, PATCH_NUMS)):
        np.testing.assert_array_equal(a, b)


def test_decode_images_shape():
    shapes = jax.eval_shape(lambda: init_vqvae_params(VQ, jax.random.key(0)))
    images = jax.eval_shape(functools.partial(next_scale.decode_images, VQ), shapes,
                            jax.ShapeDtypeStruct((B, 4, 4, 8), jnp.float32))
    assert images.shape == (B, 8, 8, 3)


def test_bad_arguments(tiny):
    params, vae_params = tiny
    run = functools.partial(next_scale.generate_var, MODEL, params, VQ, vae_params, LABELS, jax.random.key(0))
    with pytest.raises(ValueError, match="VQVAE"):
        next_scale.generate_var(MODEL, params, VQVAE(codebook_size=32, code_dim=8, patch_nums=PATCH_NUMS), vae_params,
                                LABELS, jax.random.key(0))
    with pytest.raises(ValueError, match="keys"):
        run(keys=scale_keys(0)[:K - 1])
    with pytest.raises(ValueError, match="together"):
        run(known_codes=[np.zeros((B, p, p), np.int32) for p in PATCH_NUMS])
    with pytest.raises(ValueError, match="per scale"):
        run(known_codes=[np.zeros((B, 4, 4), np.int32)] * K, known_masks=[np.zeros((B, 4, 4), bool)] * K)
    with pytest.raises(ValueError, match="top_k"):
        run(top_k=-1)


# --- parity with the reference -------------------------------------------------------------------

def grids(ref, name: str) -> list[np.ndarray]:
    """The fixture's row-major (B, p^2) codes of every scale as (B, p, p)."""
    return [ref[f"{name}_{k}"].reshape(-1, p, p) for k, p in enumerate(PATCH_NUMS)]


def close(actual, expected, rtol=1e-5):
    """Within rtol of the expected array's largest magnitude."""
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * float(np.abs(expected).max()))


def test_parity_greedy_guided(ref, tiny):
    """autoregressive_infer_cfg(cfg=1.5, top_k=1): the codes of every scale and f_hat."""
    np.testing.assert_array_equal(ref["labels"], LABELS)
    codes, f_hat = sample(tiny, cfg=1.5, **GREEDY)
    for k, expected in enumerate(grids(ref, "greedy/codes")):
        np.testing.assert_array_equal(codes[k], expected, err_msg=f"scale {k}")
    close(f_hat, ref["greedy/f_hat"].transpose(0, 2, 3, 1))


def test_parity_zero_shot_editing(ref, tiny):
    """The demo's editing sampler (inpainting box, cfg 1.5, top_k 1): its drawn codes where not known,
    the known codes where known, and f_hat built on the known codes' embeddings."""
    known = grids(ref, "edit/known")
    masks = [np.asarray(m) for m in next_scale.scale_masks(ref["edit/mask"][None].repeat(B, 0), PATCH_NUMS)]
    codes, f_hat = sample(tiny, cfg=1.5, known_codes=known, known_masks=masks, **GREEDY)
    for k, drawn in enumerate(grids(ref, "edit/drawn")):
        np.testing.assert_array_equal(codes[k], np.where(masks[k], known[k], drawn), err_msg=f"scale {k}")
    assert 0 < int(masks[-1].sum()) < masks[-1].size
    close(f_hat, ref["edit/f_hat"].transpose(0, 2, 3, 1))


@pytest.mark.parametrize("name", ["inpaint", "outpaint", "random"])
def test_scale_masks_are_the_references(ref, name):
    """replace_embedding's force-ground-truth masks, of masks on the last scale's token grid."""
    mask = ref[f"masks/{name}"]
    for k, ours in enumerate(next_scale.scale_masks(mask.reshape((-1, 4, 4)), PATCH_NUMS)):
        np.testing.assert_array_equal(ours, ref[f"masks/{name}/force_{k}"], err_msg=f"scale {k}")


@pytest.mark.parametrize("name, top_k, top_p", [("k5_ties", 5, 0.0), ("p80", 0, 0.8), ("k20_p90", 20, 0.9),
                                                ("p96", 0, 0.96)])
def test_filter_is_the_references(ref, name, top_k, top_p):
    """sample_with_top_k_top_p_'s removed entries (top_p 0 is off, as there), except that where logits
    tie with the k-th largest the reference keeps them all and `lax.top_k` the lower indices."""
    logits = ref[f"filter/{name}/logits"]
    removed = np.isinf(jax.jit(next_scale.filter_logits, static_argnums=(1, 2))(logits, top_k, top_p))
    expected = ref[f"filter/{name}/removed"]
    if top_k:
        kth = np.sort(logits, axis=-1)[..., -top_k:-top_k + 1]
        tied = logits == kth
        assert ((removed == expected) | tied).all()
        if name == "k5_ties":  # exactly k kept where the reference keeps the ties too
            assert (tied.sum(-1) > 1).any() and ((~removed).sum(-1) == top_k).all()
    else:
        np.testing.assert_array_equal(removed, expected)


def test_draws_follow_the_softmax_of_the_candidates():
    """`draw`: frequencies of 20,000 draws within 5 sigma of softmax(values); removed (-inf) never drawn."""
    values = jnp.array([2.0, 1.0, 0.5, -1.0, -jnp.inf, -jnp.inf])
    draws = np.asarray(jax.jit(next_scale.draw)(jax.random.key(0), jnp.tile(values, (20000, 1))))
    frequencies = np.bincount(draws, minlength=6) / draws.size
    expected = np.asarray(jax.nn.softmax(values))
    assert (np.abs(frequencies - expected) <= 5 * np.sqrt(expected * (1 - expected) / draws.size) + 1e-9).all()
