"""FID, Inception Score and precision/recall on inputs whose answers are known.

The three `*_matches_torch_fidelity` numbers were computed outside the project by torch-fidelity
0.3's own functions (fid_statistics_to_metric, isc_features_to_metric,
calculate_precision_recall_full) on the same seeded inputs.
"""
import numpy as np
import pytest

from marjax import metrics


def reference_inputs():
    rng = np.random.default_rng(1)
    real = rng.standard_normal((150, 5))
    generated = rng.standard_normal((120, 5)) * 0.7 + 0.5
    return real, generated


def test_running_statistics_equal_numpy_mean_and_cov():
    features = np.random.default_rng(0).standard_normal((300, 6)) * 3 + 10
    stats = metrics.RunningStatistics(6)
    for chunk in np.array_split(features, 7):
        stats.add(chunk)
    mean, cov = stats.mean_and_covariance()
    np.testing.assert_allclose(mean, features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(features, rowvar=False), rtol=1e-9)


def test_fid_of_a_set_with_itself_is_zero():
    mean, cov = metrics.feature_statistics(np.random.default_rng(0).standard_normal((500, 32)))
    assert metrics.frechet_distance(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-8)


def test_fid_of_two_gaussians_equals_the_closed_form():
    """Commuting covariances (same eigenvectors): |dmu|^2 + sum (sqrt a - sqrt b)^2. Non-commuting
    2x2: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for M = sigma1 sigma2."""
    rotation, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((4, 4)))
    a, b = np.array([1.0, 2.0, 3.0, 0.5]), np.array([4.0, 1.0, 0.25, 0.5])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    closed_form = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = metrics.frechet_distance(mu1, rotation @ np.diag(a) @ rotation.T, mu2, rotation @ np.diag(b) @ rotation.T)
    assert got == pytest.approx(closed_form, rel=1e-10)

    s1, s2 = np.array([[2.0, 0.5], [0.5, 1.0]]), np.array([[1.0, -0.3], [-0.3, 3.0]])
    product = s1 @ s2
    trace_sqrt = np.sqrt(np.trace(product) + 2 * np.sqrt(np.linalg.det(product)))
    got = metrics.frechet_distance(np.zeros(2), s1, np.ones(2), s2)
    assert got == pytest.approx(2.0 + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt, rel=1e-10)


def test_fid_matches_torch_fidelity():
    real, generated = reference_inputs()
    got = metrics.frechet_distance(*metrics.feature_statistics(real), *metrics.feature_statistics(generated))
    assert got == pytest.approx(1.976803613829441, rel=1e-9)


def test_fid_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="do not match"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_inception_score_of_uniform_predictions_is_one():
    mean, std = metrics.inception_score(np.zeros((100, 1008)))
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_balanced_predictions_is_the_class_count():
    logits = np.eye(8)[np.arange(80) % 8] * 100.0
    assert metrics.inception_score(logits, splits=1)[0] == pytest.approx(8.0, rel=1e-6)


def test_inception_score_matches_torch_fidelity():
    logits = np.random.default_rng(0).standard_normal((203, 8)) * 3
    mean, std = metrics.inception_score(logits)
    assert mean == pytest.approx(3.0309845728451585, rel=1e-9)
    assert std == pytest.approx(0.2254471355785027, rel=1e-9)


def test_precision_recall_matches_torch_fidelity():
    """torch-fidelity's first input is the generated set: its 'recall' there is our precision."""
    real, generated = reference_inputs()
    precision, recall = metrics.precision_recall(real, generated)
    assert precision == pytest.approx(113 / 120) and recall == pytest.approx(105 / 150)


def test_precision_recall_sanity():
    real = np.random.default_rng(0).standard_normal((200, 8))
    assert metrics.precision_recall(real, real) == (1.0, 1.0)
    assert metrics.precision_recall(real, real + 100.0) == (0.0, 0.0)
    collapsed = real[:1] + 0.01 * np.random.default_rng(1).standard_normal((50, 8))
    precision, recall = metrics.precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.05
