"""The training log's alarms: blank or identical sample grids, a loss that stopped falling, a collapsed codebook."""
import numpy as np

from marjax.run_health import LossPlateau, codebook_warning, grid_warning


def test_blank_and_identical_grids_are_named_and_a_varied_one_passes():
    blank = np.full((4, 8, 8, 1), 17, np.uint8)
    assert "step 300 is blank" in grid_warning(blank, 300)
    one = np.random.default_rng(0).integers(0, 255, (1, 8, 8, 3), dtype=np.uint8)
    assert "one image 4 times" in grid_warning(np.repeat(one, 4, axis=0), 300)
    varied = np.random.default_rng(1).integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
    assert grid_warning(varied, 300) is None


def test_a_plateau_warns_once_and_a_new_best_starts_a_new_watch():
    plateau = LossPlateau(patience=3)
    losses = [1.0, 0.8, 0.9, 0.85, 0.81, 0.82, 0.83, 0.7, 0.75, 0.75, 0.71]
    warnings = {100 * (i + 1): plateau.update(100 * (i + 1), loss) for i, loss in enumerate(losses)}
    fired = {step: w for step, w in warnings.items() if w}
    assert sorted(fired) == [500, 1100]
    assert "best 0.8 at step 200, now 0.81 at step 500" in fired[500]


def test_a_collapsed_codebook_is_named():
    assert "2.0% of the codes" in codebook_warning({"codebook_usage": 0.02, "loss": 1.0}, 40)
    assert codebook_warning({"codebook_usage": 0.5}, 40) is None
    assert codebook_warning({"loss": 1.0}, 40) is None
