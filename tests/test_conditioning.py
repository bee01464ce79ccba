"""The conditioning rule of the parity check on hand-made cost volumes: a tie may flip, a
clear minimum may not."""

import numpy as np

from mal_jax.port import conditioning
from mal_jax.port.parity_discrete import COST_TIE_TOLERANCE


def _volume():
    """(1, 2, 2, 4) costs: an exact tie, a near-tie, a clear minimum, one just clear."""
    cost = np.full((1, 2, 2, 4), 0.9)
    cost[0, 0, 0, [1, 2]] = 0.5  # exact tie between bins 1 and 2
    cost[0, 0, 1, [0, 3]] = [0.4, 0.4 + COST_TIE_TOLERANCE / 3]  # near-tie
    cost[0, 1, 0, 2] = 0.1  # clear minimum at bin 2
    cost[0, 1, 1, [0, 1]] = [0.3, 0.3 + 2 * COST_TIE_TOLERANCE]  # clear, by twice the tolerance
    return cost


def test_margin_of_hand_made_cost_volume():
    margin = conditioning.best_two_margin(_volume())
    tol = COST_TIE_TOLERANCE
    np.testing.assert_allclose(margin, [[[0.0, tol / 3], [0.8, 2 * tol]]], rtol=1e-9, atol=1e-15)
    ill = margin <= COST_TIE_TOLERANCE
    np.testing.assert_array_equal(ill, [[[True, True], [False, False]]])


def test_a_tie_may_flip_a_clear_minimum_may_not():
    cost = _volume()
    ill = conditioning.best_two_margin(cost) <= COST_TIE_TOLERANCE
    ours = np.argmin(cost, axis=-1)  # [[1, 0], [2, 0]]
    ties_flipped = ours.copy()
    ties_flipped[0, 0, 0] = 2  # the other bin of the exact tie
    ties_flipped[0, 0, 1] = 3  # the other bin of the near-tie
    check = conditioning.compare_conditioned("lowest_cost", ties_flipped, ours, ill)
    assert check.ok, check.detail
    assert "ill-conditioned 50.000%" in check.detail
    assert "disagree 50.000%" in check.detail
    for pixel, wrong_bin in (((0, 1, 0), 1), ((0, 1, 1), 1)):
        flipped = ours.copy()
        flipped[pixel] = wrong_bin
        check = conditioning.compare_conditioned("lowest_cost", flipped, ours, ill)
        assert not check.ok, pixel
        assert check.rel == 0.25
        assert "1 on well-conditioned" in check.detail


def test_single_candidate_and_threshold_margins():
    assert np.isinf(conditioning.best_two_margin(np.ones((3, 1)))).all()
    margin = conditioning.threshold_margin(np.array([2.0, 2.0004, 5.0, 221.9999]), [2.0, 222.0])
    np.testing.assert_allclose(margin, [0.0, 4e-4, 3.0, 1e-4], atol=1e-9)


def test_upsample_nearest_repeats_blocks():
    mask = np.array([[[True, False], [False, False]]])
    up = conditioning.upsample_nearest(mask, 4, 8)
    assert up.shape == (1, 4, 8)
    assert up[0, :2, :4].all() and not up[0, 2:].any() and not up[0, :, 4:].any()


def test_shape_mismatch_fails():
    check = conditioning.compare_conditioned("x", np.zeros((2, 3)), np.zeros((3, 2)),
                                             np.zeros((3, 2), bool))
    assert not check.ok and "shape" in check.detail
