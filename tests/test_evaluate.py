"""The evaluation's parts in-process: the digits feature network, references, padded batches.
The whole `--mode=eval` runs in tests/test_main_program.py."""
import os

import numpy as np
import pytest

from marjax import metrics
from marjax.config.loading import load_config_file
from marjax.data.digits import DigitsSource
from marjax.feature_networks.digits import digits_features, heldout_accuracy, train_digits_classifier
from marjax.tasks.scoring import ADM_REFERENCE_FILE, load_reference, make_feature_network, padded_batches
from marjax.parallel.sharding import make_mesh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def classifier():
    return train_digits_classifier(0)


def pool(params, images):
    return np.asarray(digits_features(params, images)["pool"])


def test_classifier_recognises_heldout_digits(classifier):
    assert heldout_accuracy(classifier) > 0.9


def test_digit_features_separate_real_digits_from_noise(classifier):
    images = DigitsSource(8).images
    reference = metrics.feature_statistics(pool(classifier, images[:1500]))
    noise = np.random.default_rng(0).integers(0, 256, (297, 8, 8, 1), dtype=np.uint8)
    real_fid = metrics.frechet_distance(*metrics.feature_statistics(pool(classifier, images[1500:])), *reference)
    noise_fid = metrics.frechet_distance(*metrics.feature_statistics(pool(classifier, noise)), *reference)
    assert real_fid < 20 and noise_fid > 10 * real_fid


def test_upscaled_digits_give_the_same_features(classifier):
    np.testing.assert_allclose(pool(classifier, DigitsSource(16).images[:50]), pool(classifier, DigitsSource(8).images[:50]),
                               rtol=1e-5, atol=1e-5)


def test_padded_batches_repeat_entries_to_one_shape():
    batches = list(padded_batches(np.arange(7), 3))
    assert [count for _, count in batches] == [3, 3, 1]
    np.testing.assert_array_equal(batches[-1][0], [6, 6, 6])


def digits_config(**eval_fields):
    config = load_config_file(os.path.join(REPO, "configs", "digits.py"))
    config.eval.update(eval_fields)
    return config


@pytest.fixture(scope="module")
def network_and_mesh(classifier):
    mesh = make_mesh()
    return make_feature_network(digits_config(), mesh), mesh


def test_reference_from_an_adm_npz(network_and_mesh, tmp_path):
    """mu/sigma come from the file as they are; arr_0's features serve precision/recall, and the
    statistics when the file has none."""
    network, mesh = network_and_mesh
    images = DigitsSource(8).images[:60]
    path = str(tmp_path / "ref.npz")
    np.savez(path, mu=np.arange(64.0), sigma=np.eye(64), arr_0=images)
    config = digits_config(reference=path)
    reference = load_reference(config, network, 25, mesh)
    np.testing.assert_array_equal(reference.mean, np.arange(64.0))
    np.testing.assert_allclose(reference.features, pool(train_digits_classifier(0), images), rtol=1e-5, atol=1e-5)

    np.savez(path, arr_0=images)
    reference = load_reference(config, network, 25, mesh)
    np.testing.assert_allclose(reference.mean, reference.features.mean(axis=0), rtol=1e-6, atol=1e-6)

    with pytest.raises(FileNotFoundError, match=ADM_REFERENCE_FILE):
        load_reference(digits_config(reference=str(tmp_path / "missing.npz")), network, 25, mesh)


def test_reference_from_the_data_source(network_and_mesh):
    network, mesh = network_and_mesh
    reference = load_reference(digits_config(num_reference_images=50), network, 25, mesh)
    expected = DigitsSource(8).images[np.linspace(0, 1796, 50).astype(int)]
    np.testing.assert_allclose(reference.features, pool(train_digits_classifier(0), expected), rtol=1e-5, atol=1e-5)
