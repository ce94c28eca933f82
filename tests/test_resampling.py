"""Torch-equal `area`, `bicubic` and `bilinear` resizing, checked against torch itself on VAR's scale sizes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.tokenizers.resampling import (area_matrix, area_resize, bicubic_matrix, bicubic_resize, bilinear_matrix,
                                          bilinear_resize, resize)

SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def torch_interpolate(image: np.ndarray, size: int, mode: str) -> np.ndarray:
    torch = pytest.importorskip("torch")
    nchw = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
    return torch.nn.functional.interpolate(nchw, size=(size, size), mode=mode).numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("mode, matrix", [("area", area_matrix), ("bicubic", bicubic_matrix),
                                          ("bilinear", bilinear_matrix)])
def test_matrices_are_torchs_for_every_pair_of_sizes(mode, matrix):
    """torch resizing the n one-hot images (n, n, 1, 1) gives its (m, n) matrix, column by column."""
    for n in SIZES:
        basis = np.eye(n, dtype=np.float32).reshape(n, n, 1, 1)
        for m in SIZES:
            expected = torch_interpolate(basis, m, mode)[:, :, 0, 0].T  # (m, n); width 1 -> 1 is exact
            # torch builds its bicubic weights in float32: up to about 1e-6 from these exact ones
            np.testing.assert_allclose(matrix(m, n), expected, rtol=0, atol=2e-6, err_msg=f"{mode} {n} -> {m}")


@pytest.mark.parametrize("mode, source, target", [("area", 16, p) for p in SIZES] + [("area", 4, 3), ("area", 3, 5)]
                         + [("bicubic", p, 16) for p in SIZES] + [("bicubic", 13, 6)]
                         + [("bilinear", 16, p) for p in SIZES] + [("bilinear", 3, 8)])
def test_images_match_torch(mode, source, target):
    """2-D resizes as VAR uses them (area 16 -> p_k, bicubic p_k -> 16, an edit mask bilinear 16 -> p_k),
    and a few others."""
    image = np.random.default_rng(source * 31 + target).standard_normal((2, source, source, 3)).astype(np.float32)
    resize_fn = {"area": area_resize, "bicubic": bicubic_resize, "bilinear": bilinear_resize}[mode]
    ours = resize_fn(jnp.asarray(image), target)
    np.testing.assert_allclose(ours, torch_interpolate(image, target, mode), rtol=1e-5, atol=4e-6)


def test_area_bins_overlap_when_sizes_do_not_divide():
    # torch's adaptive pooling 4 -> 3: bins [0, 2), [1, 3), [2, 4)
    np.testing.assert_array_equal(area_matrix(3, 4), [[0.5, 0.5, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 0.5, 0.5]])
    np.testing.assert_array_equal(area_matrix(2, 4), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])


def test_bicubic_rows_sum_to_one_and_same_size_is_the_identity():
    for n in SIZES:
        np.testing.assert_array_equal(bicubic_matrix(n, n), np.eye(n))
        for m in SIZES:
            np.testing.assert_allclose(bicubic_matrix(m, n).sum(1), 1.0, rtol=1e-6)
    # 1 -> 2 pixels: every tap clamps to the one source pixel
    np.testing.assert_allclose(bicubic_matrix(2, 1), [[1.0], [1.0]], rtol=1e-6)


def test_resize_is_separable_on_height_and_width():
    x = jax.random.normal(jax.random.key(0), (1, 4, 6, 2))
    out = resize(x, area_matrix(3, 4), bicubic_matrix(5, 6))
    expected = jnp.einsum("ip,bpwc->biwc", area_matrix(3, 4), x)
    expected = jnp.einsum("jq,biqc->bijc", bicubic_matrix(5, 6), expected)
    assert out.shape == (1, 3, 5, 2)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
