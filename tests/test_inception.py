"""The FID Inception-v3 against torch-fidelity's network with the same random weights.

tests/fixtures/inception_random_reference.npz was produced outside the project: torch-fidelity's
FeatureExtractorInceptionV3, every state-dict entry drawn by `random_entry` below (the recipe,
repeated here so the fixture holds no weights), run on two 20x24 images (upsampled to 299) and
one 320x320 image (a 40x40 base repeated 8x, downsampled). It holds the keys and shapes of the
reference state dict, the inputs and the pool3 features and logits.
"""
import os
import zlib

import numpy as np
import pytest

from marjax.feature_networks import inception
from marjax.feature_networks.inception_torch_layout import WEIGHT_FILE, load_inception_params, params_from_torch_state

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "inception_random_reference.npz")


def random_entry(seed: int, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The fixture's weight recipe: He-scaled convs, BatchNorm scales/variances in [0.5, 1.5),
    small biases and means; one generator per key, seeded by (seed, crc32(key))."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    leaf = key.split(".")[-1]
    if len(shape) == 4:
        return rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    if key == "fc.weight":
        return rng.standard_normal(shape) / np.sqrt(shape[1])
    if leaf in ("weight", "running_var"):
        return rng.uniform(0.5, 1.5, shape)
    return rng.standard_normal(shape) * 0.1


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as data:
        return dict(data)


@pytest.fixture(scope="module")
def random_state(reference):
    shapes = [tuple(s[:n]) for s, n in zip(reference["shapes"], reference["ndims"])]
    return {str(k): random_entry(int(reference["seed"]), str(k), s).astype(np.float32)
            for k, s in zip(reference["keys"], shapes)}


@pytest.fixture(scope="module")
def params(random_state, tmp_path_factory):
    """Loaded through the weight-file path: the random state dict saved as a .pth file."""
    import torch

    path = str(tmp_path_factory.mktemp("inception") / WEIGHT_FILE)
    state = {k: torch.from_numpy(v) for k, v in random_state.items()}
    state["Conv2d_1a_3x3.bn.num_batches_tracked"] = torch.tensor(0)
    torch.save(state, path)
    return load_inception_params(path)


def assert_matches(got: dict, reference: dict, name: str) -> None:
    for output in ("pool", "logits_unbiased", "logits"):
        expected = reference[f"{name}_{output}"]
        np.testing.assert_allclose(np.asarray(got[output]), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max(),
                                   err_msg=f"{name} {output}")


def test_features_match_the_reference_network(params, reference):
    assert_matches(inception.features(params, reference["small_images"]), reference, "small")
    repeat = int(reference["large_repeat"])
    large = reference["large_base"][None].repeat(repeat, axis=1).repeat(repeat, axis=2)
    assert_matches(inception.features(params, large), reference, "large")


def test_tf1_bilinear_resize_weights():
    """Upsampling 2 -> 4 reads source positions 0, 0.5, 1, 1.5 (no half-pixel shift); the last
    row clamps to the edge. Every row sums to 1."""
    np.testing.assert_allclose(inception.tf1_bilinear_matrix(2, 4), [[1, 0], [0.5, 0.5], [0, 1], [0, 1]])
    weights = inception.tf1_bilinear_matrix(320)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)


def test_missing_weight_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=WEIGHT_FILE):
        load_inception_params(str(tmp_path / "nowhere.pth"))
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth"):
        load_inception_params("")


def test_state_dict_mismatch_is_listed(random_state):
    state = dict(random_state)
    del state["Mixed_6b.branch7x7_2.conv.weight"]
    state["Mixed_6b.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"Mixed_6b/branch7x7_2/conv/kernel.*Mixed_6b\.extra\.weight"):
        params_from_torch_state(state)
