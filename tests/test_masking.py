"""Training masks and the sampler's mask schedule against closed forms."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from marjax.models import masking


def cosine_len(seq_len, k, num_iter):
    return math.floor(seq_len * math.cos(math.pi / 2 * (k + 1) / num_iter))


def test_schedule_with_one_step_per_token_predicts_one_token_each_step():
    s = masking.sampling_schedule(256, 256)
    np.testing.assert_array_equal(s.num_predicted, np.ones(256))
    np.testing.assert_array_equal(s.masked_before, 256 - np.arange(256))
    assert s.max_predicted == 1 and s.max_known == 255


@pytest.mark.parametrize("seq_len, num_iter", [(256, 64), (256, 16), (64, 16), (16, 4)])
def test_schedule_follows_the_clamped_cosine(seq_len, num_iter):
    s = masking.sampling_schedule(seq_len, num_iter)
    k = np.arange(num_iter - 1)
    expected_after = [min(seq_len - i - 1, cosine_len(seq_len, i, num_iter)) for i in k]
    np.testing.assert_array_equal(s.masked_after[:-1], expected_after)
    assert s.masked_after[-1] == 0 and s.masked_before[0] == seq_len
    np.testing.assert_array_equal(s.masked_before[1:], s.masked_after[:-1])
    assert s.num_predicted.sum() == seq_len and (s.num_predicted >= 1).all()
    # The last step predicts all that remains, yet the CFG schedule still reads mask_len = 1.
    assert s.cfg_mask_len[-1] == 1


def test_schedule_counts_for_64_steps_over_256_tokens():
    s = masking.sampling_schedule(256, 64)
    assert list(s.masked_after[:4]) == [255, 254, 253, 252]
    # masked_after[59:63] = floor(256 sin(pi/2 * {4,3,2,1}/64)) = 25, 18, 12, 6, then 0.
    assert list(s.masked_after[-5:]) == [25, 18, 12, 6, 0]
    assert list(s.num_predicted[-4:]) == [7, 6, 6, 6]
    assert s.max_predicted == 7


def test_linear_cfg_schedule():
    s = masking.sampling_schedule(16, 4)
    np.testing.assert_allclose(s.cfg_scales(3.0, "linear"), 1 + 2.0 * (16 - s.cfg_mask_len) / 16, rtol=1e-6)
    np.testing.assert_allclose(s.cfg_scales(3.0, "constant"), np.full(4, 3.0))
    with pytest.raises(ValueError, match="cfg schedule"):
        s.cfg_scales(3.0, "cosine")


def test_training_mask_counts_follow_the_truncated_normal():
    keys = jax.random.split(jax.random.key(0), 4000)
    counts = np.asarray(jax.vmap(lambda k: masking.sample_num_masked(k, 256, 0.7))(keys))
    assert counts.min() >= 180 and counts.max() <= 256
    assert masking.max_unmasked(256, 0.7) == 76
    ratio = stats.truncnorm((0.7 - 1) / 0.25, 0, loc=1.0, scale=0.25)
    expected = np.mean(np.ceil(256 * ratio.rvs(200_000, random_state=0)))
    assert abs(counts.mean() - expected) < 1.0
    assert counts.std() > 10  # not a constant


def test_mask_is_the_head_of_each_order():
    orders = masking.sample_orders(jax.random.key(1), 3, 10)
    np.testing.assert_array_equal(np.sort(np.asarray(orders), axis=1), np.tile(np.arange(10), (3, 1)))
    mask = np.asarray(masking.mask_from_orders(orders, jnp.int32(4)))
    for b in range(3):
        assert set(np.flatnonzero(mask[b])) == set(np.asarray(orders[b, :4]))


@pytest.mark.parametrize("seq_len, count", [(64, 3), (256, 4), (16, 5), (64, 1)])
def test_mask_count_buckets_cover_every_count_with_the_tightest_shapes(seq_len, count):
    buckets = masking.mask_count_buckets(seq_len, 0.7, count)
    assert len(buckets) == count
    keep_max = masking.max_unmasked(seq_len, 0.7)
    assert buckets[-1][0] == keep_max and buckets[0][1] == seq_len
    hit = set()
    for num_masked in range(seq_len - keep_max, seq_len + 1):
        index = int(masking.bucket_index(jnp.int32(num_masked), buckets))
        keep, masked = buckets[index]
        known = seq_len - num_masked
        assert known <= keep and num_masked <= masked, (num_masked, buckets[index])
        # The tightest bucket: the next one has fewer DiffLoss positions than this mask needs.
        assert index == count - 1 or num_masked > buckets[index + 1][1]
        hit.add(index)
    assert hit == set(range(count))


def test_mask_count_buckets_of_the_comparison_config_and_their_errors():
    assert masking.mask_count_buckets(64, 0.7, 3) == [(5, 64), (12, 58), (19, 51)]
    assert masking.mask_count_buckets(64, 0.7, 1) == [(19, 64)]
    with pytest.raises(ValueError, match=r"mask_buckets must be in \[1, 20\].*got 21"):
        masking.mask_count_buckets(64, 0.7, 21)
    with pytest.raises(ValueError, match="got 0"):
        masking.mask_count_buckets(64, 0.7, 0)
