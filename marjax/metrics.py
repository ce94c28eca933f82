"""Sample-quality metrics on feature vectors, computed on the host in float64.

- FID: Frechet distance between Gaussians fitted to two feature sets, with the matrix square
  root of sigma1 sigma2 from `scipy.linalg.sqrtm` as pytorch-fid and ADM's evaluator take it
  (an eps offset on the diagonals when the product is singular; the tiny imaginary part dropped).
- Inception Score: exp(E KL(p(y|x) || p(y))) over 10 splits of the shuffled logits, as
  torch-fidelity (float64 softmax, permutation by RandomState(2020), split i = [iN/10, (i+1)N/10)).
- Nearest-training distance and within-class spread: the figures of the independent sample checks
  (`marjax.digits_check`, `benchmarks/folder_check.py`).
- Precision / recall (Kynkaanniemi et al. 2019, k = 3, as ADM's evaluator and torch-fidelity): a
  feature set's manifold is the union of balls around each of its points, radius = distance to
  its k-th nearest other point; precision = share of generated points inside the real manifold,
  recall = share of real points inside the generated one.
"""
import numpy as np
import scipy.linalg
import scipy.special


class RunningStatistics:
    """Mean and covariance of feature batches added one at a time (float64 sums; np.cov's ddof=1)."""

    def __init__(self, dim: int):
        self.count = 0
        self.total = np.zeros(dim, np.float64)
        self.outer = np.zeros((dim, dim), np.float64)

    def add(self, features: np.ndarray) -> None:
        """features: (B, dim)."""
        features = np.asarray(features, np.float64)
        self.count += len(features)
        self.total += features.sum(axis=0)
        self.outer += features.T @ features

    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """((dim,), (dim, dim)). Needs at least two vectors."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.count}")
        mean = self.total / self.count
        return mean, (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, dim) -> (mean (dim,), covariance (dim, dim)), float64."""
    stats = RunningStatistics(features.shape[1])
    stats.add(features)
    return stats.mean_and_covariance()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), in float64."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1),) * 2:
        raise ValueError(f"statistics do not match: means {mu1.shape} {mu2.shape}, covariances "
                         f"{sigma1.shape} {sigma2.shape}")
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # singular product: regularise as pytorch-fid does
        offset = np.eye(len(mu1)) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrt(sigma1 sigma2) has a large imaginary part {np.abs(covmean.imag).max():g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(logits: np.ndarray, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """(N, classes) logits -> (mean, std) of the per-split scores."""
    logits = np.asarray(logits, np.float64)[np.random.RandomState(seed).permutation(len(logits))]
    if len(logits) < splits:
        raise ValueError(f"the Inception Score needs at least {splits} samples, got {len(logits)}")
    log_p = scipy.special.log_softmax(logits, axis=1)
    scores = []
    for i in range(splits):
        chunk = log_p[i * len(logits) // splits:(i + 1) * len(logits) // splits]
        log_marginal = np.log(np.exp(chunk).mean(axis=0))
        scores.append(np.exp((np.exp(chunk) * (chunk - log_marginal)).sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a ** 2).sum(1)[:, None] - 2 * a @ b.T + (b ** 2).sum(1)[None], 0)


def nearest_distance(queries: np.ndarray, references: np.ndarray) -> float:
    """Mean over queries (N, D) of the Euclidean distance to the nearest row of references (M, D):
    how close samples lie to the training images, against real held-out images (copies: near 0)."""
    return float(np.sqrt(_squared_distances(queries, references).min(axis=1)).mean())


def within_class_spread(pixels: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present of the mean per-pixel std within the class: variety.
    pixels (N, D), labels (N,)."""
    return float(np.mean([pixels[labels == c].std(axis=0).mean() for c in np.unique(labels)]))


def manifold_radii(features: np.ndarray, k: int = 3, batch_size: int = 2048) -> np.ndarray:
    """(N,) squared distance from each point to its k-th nearest other point of the set."""
    features = np.asarray(features, np.float64)
    if len(features) <= k:
        raise ValueError(f"k={k} nearest neighbours need more than {k} points, got {len(features)}")
    radii = [np.partition(_squared_distances(features[i:i + batch_size], features), k, axis=1)[:, k]
             for i in range(0, len(features), batch_size)]  # column 0 of the sort is the point itself
    return np.concatenate(radii)


def share_inside(queries: np.ndarray, points: np.ndarray, radii: np.ndarray, batch_size: int = 2048) -> float:
    """Fraction of `queries` within the squared radius of at least one of `points`."""
    queries, points = np.asarray(queries, np.float64), np.asarray(points, np.float64)
    inside = [(_squared_distances(queries[i:i + batch_size], points) <= radii[None]).any(axis=1)
              for i in range(0, len(queries), batch_size)]
    return float(np.concatenate(inside).mean())


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of `generated` (N, dim) against `real` (M, dim) features."""
    precision = share_inside(generated, real, manifold_radii(real, k))
    recall = share_inside(real, generated, manifold_radii(generated, k))
    return precision, recall
