"""LPIPS against an independent PyTorch statement of it on the reference key layout, the weight
files' loading and errors, and the perceptual term inside the tokenizer loss."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F

from marjax.tokenizers.kl import AutoencoderKL
from marjax.tokenizers.lpips import VGG16_BLOCKS, LPIPS, load_lpips, lpips_from_torch, unit_normalize, vgg_blocks
from marjax.tokenizers.discriminator import PatchDiscriminator
from marjax.tasks.autoencoder_step import TokenizerLoss, create_tokenizer_state, make_tokenizer_train_step
from marjax.config.loading import load_config_file
from marjax.errors import ConfigError, ConversionError
from marjax.tasks import autoencoder
from marjax.tasks.registry import check_config

# torchvision's vgg16().features: (in, out) of the conv at each index; "M" max pools.
TORCHVISION_VGG16 = [(3, 64), "R", (64, 64), "R", "M", (64, 128), "R", (128, 128), "R", "M", (128, 256), "R",
                     (256, 256), "R", (256, 256), "R", "M", (256, 512), "R", (512, 512), "R", (512, 512), "R", "M",
                     (512, 512), "R", (512, 512), "R", (512, 512), "R"]
TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


def random_lpips_state(seed: int = 0) -> tuple[dict, dict]:
    """Random VGG-16 (He-scaled, with a classifier entry) and lin state dicts in torch layout."""
    rng = np.random.default_rng(seed)
    vgg = {"classifier.0.weight": rng.normal(size=(4, 8)).astype(np.float32)}
    for i, layer in enumerate(TORCHVISION_VGG16):
        if isinstance(layer, tuple):
            cin, cout = layer
            vgg[f"features.{i}.weight"] = (rng.normal(size=(cout, cin, 3, 3)) * np.sqrt(2 / (9 * cin))).astype(np.float32)
            vgg[f"features.{i}.bias"] = (0.1 * rng.normal(size=cout)).astype(np.float32)
    lin = {f"lin{k}.model.1.weight": rng.uniform(0, 0.1, size=(1, c, 1, 1)).astype(np.float32)
           for k, c in enumerate((64, 128, 256, 512, 512))}
    return vgg, lin


def tiny_lpips_state() -> tuple[dict, dict]:
    """A two-block VGG-like file pair (3 -> 4 | pool | 4 -> 8) for cheap end-to-end runs."""
    rng = np.random.default_rng(0)
    vgg = {"features.0.weight": rng.normal(size=(4, 3, 3, 3)), "features.0.bias": np.zeros(4),
           "features.3.weight": rng.normal(size=(8, 4, 3, 3)) / 6, "features.3.bias": np.zeros(8)}
    lin = {"lin0.model.1.weight": rng.uniform(0, 0.1, size=(1, 4, 1, 1)),
           "lin1.model.1.weight": rng.uniform(0, 0.1, size=(1, 8, 1, 1))}
    return ({k: v.astype(np.float32) for k, v in vgg.items()}, {k: v.astype(np.float32) for k, v in lin.items()})


def test_vgg_blocks_follow_the_file():
    assert vgg_blocks(tiny_lpips_state()[0]) == ((4,), (8,))
    vgg = random_lpips_state()[0]
    vgg["features.11.weight"] = vgg.pop("features.10.weight")
    with pytest.raises(ValueError, match="features.7 is followed by features.11"):
        vgg_blocks(vgg)


def torch_lpips(vgg: dict, lin: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LPIPS restated on torchvision's layer sequence; x, y (B, H, W, 3) in [-1, 1] -> (B,)."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    h = (torch.from_numpy(np.concatenate([x, y])).permute(0, 3, 1, 2) - shift) / scale
    taps = []
    for i, layer in enumerate(TORCHVISION_VGG16):
        if layer == "M":
            h = F.max_pool2d(h, 2, 2)
        elif layer == "R":
            h = F.relu(h)
        else:
            h = F.conv2d(h, torch.from_numpy(vgg[f"features.{i}.weight"]), torch.from_numpy(vgg[f"features.{i}.bias"]),
                         padding=1)
        if i in TAPS:
            taps.append(h)
    total = 0
    for k, feats in enumerate(taps):
        normed = feats / (feats.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        a, b = normed.chunk(2)
        total = total + F.conv2d((a - b) ** 2, torch.from_numpy(lin[f"lin{k}.model.1.weight"])).mean((2, 3))
    return total[:, 0].numpy()


@pytest.fixture(scope="module")
def weights():
    vgg, lin = random_lpips_state()
    lpips, params = lpips_from_torch(vgg, lin)
    assert lpips.blocks == VGG16_BLOCKS
    return vgg, lin, params


def test_lpips_matches_a_torch_statement_of_the_reference(weights):
    vgg, lin, params = weights
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(3, 32, 32, 3)).astype(np.float32)
    y = np.clip(x + 0.3 * rng.normal(size=x.shape), -1, 1).astype(np.float32)
    expected = torch_lpips(vgg, lin, x, y)
    ours = np.asarray(LPIPS().apply({"params": params}, x, y))
    assert expected.min() > 0.01, expected
    np.testing.assert_allclose(ours, expected, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(LPIPS().apply({"params": params}, x, x)), 0.0, atol=1e-7)
    gray = np.asarray(LPIPS().apply({"params": params}, x[..., :1], y[..., :1]))
    np.testing.assert_allclose(gray, torch_lpips(vgg, lin, x[..., :1].repeat(3, -1), y[..., :1].repeat(3, -1)),
                               rtol=2e-5)


def test_unit_normalize_has_finite_gradients_at_zero():
    grad = jax.grad(lambda f: jnp.sum(unit_normalize(f) * jnp.arange(4.0)))(jnp.zeros((2, 4)))
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(unit_normalize(jnp.array([[3.0, 4.0]])), [[0.6, 0.8]], rtol=1e-6)


def test_weight_files_load_and_bad_files_are_named(weights, tmp_path):
    vgg, lin, params = weights
    vgg_path, lin_path = str(tmp_path / "vgg16-397923af.pth"), str(tmp_path / "vgg.pth")
    torch.save({k: torch.from_numpy(v) for k, v in vgg.items()}, vgg_path)
    torch.save({k: torch.from_numpy(v) for k, v in lin.items()}, lin_path)
    loaded = load_lpips(vgg_path, lin_path)[1]
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    with pytest.raises(ConversionError, match="missing.pth: no such file"):
        load_lpips(vgg_path, str(tmp_path / "missing.pth"))
    torch.save({k: torch.from_numpy(v) for k, v in lin.items() if not k.startswith("lin3")}, lin_path)
    with pytest.raises(ConversionError, match=r"missing \['lin3/kernel'\]"):
        load_lpips(vgg_path, lin_path)


def test_the_perceptual_term_enters_the_kl_nll():
    """nll = sum(|x - x'| + w LPIPS(x, x')) / B with logvar 0, from the step's own metrics."""
    lpips = LPIPS(blocks=((4,), (8,)))  # the loss's composition, not VGG-16, is under test: keep it cheap
    model = AutoencoderKL(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), embed_dim=2,
                          image_channels=3, resolution=16)
    disc = PatchDiscriminator(ndf=8, num_layers=2)
    tx = optax.sgd(0.0)
    images = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, size=(2, 16, 16, 3)), jnp.float32)
    state = jax.jit(functools.partial(create_tokenizer_state, model, disc, tx, tx, images))(jax.random.key(0))
    lpips_params = jax.tree.map(jnp.abs, jax.jit(lpips.init)(jax.random.key(3), images, images)["params"])
    step = make_tokenizer_train_step(model, disc, tx, tx, TokenizerLoss(perceptual_weight=2.0), lpips=lpips)
    metrics = jax.jit(step)(state, {"images": images}, jax.random.key(1), lpips_params)[1]
    assert metrics["p_loss"] > 0.01
    np.testing.assert_allclose(metrics["nll"], (metrics["rec_loss"] + 2.0 * metrics["p_loss"]) * images[0].size,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="needs lpips_params"):
        step(state, {"images": images}, jax.random.key(1))


def test_config_names_missing_lpips_files_and_warns_without_them(tmp_path, caplog):
    config = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "kl16.py"))
    present = tmp_path / "vgg.pth"
    present.write_bytes(b"")
    config.tokenizer.perceptual_weight, config.tokenizer.lpips_lin = 1.0, str(present)
    with pytest.raises(ConfigError, match="tokenizer.lpips_vgg16 is not set"):
        check_config(config)
    config.tokenizer.lpips_vgg16 = str(tmp_path / "vgg16-397923af.pth")
    with pytest.raises(ConfigError, match="vgg16-397923af.pth: no such file"):
        check_config(config)
    config.tokenizer.lpips_vgg16 = config.tokenizer.lpips_lin = ""
    check_config(config)
    with caplog.at_level("WARNING"):
        assert autoencoder._lpips(config.tokenizer)[1] is None
    assert "training WITHOUT the perceptual loss" in caplog.text
