"""The promotion rule on scores worked out by hand: paired gains, the bootstrap interval, the margin."""

import numpy as np
import pytest

from alignflow.promotion import bootstrap_interval, decide, paired_gains


def test_paired_gains_average_each_prompts_sample_differences():
    challenger = [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]  # [sample][prompt]
    champion = [[0.0, 2.0, 1.0], [1.0, 2.0, 1.0]]
    # differences [[1, 0, 2], [2, 0, 0]] -> per prompt (1+2)/2, 0, (2+0)/2
    assert paired_gains(challenger, champion).tolist() == [1.5, 0.0, 1.0]


def test_paired_gains_refuse_grids_of_different_shapes():
    with pytest.raises(ValueError, match="two equal"):
        paired_gains([[1.0, 2.0]], [[1.0, 2.0, 3.0]])


def test_bootstrap_interval_of_two_prompts_spans_their_gains():
    # resampled means of [0, 1] are 0, 0.5, 1 with chances 1/4, 1/2, 1/4: the 2.5% and 97.5%
    # percentiles are 0 and 1
    assert bootstrap_interval(np.array([0.0, 1.0]), 0.95, 2000, seed=0) == (0.0, 1.0)


def test_bootstrap_interval_of_equal_gains_is_that_gain():
    assert bootstrap_interval(np.array([0.25, 0.25, 0.25]), 0.95, 1000, seed=0) == (0.25, 0.25)


def test_bootstrap_interval_is_reproducible_and_holds_the_mean():
    gains = np.random.default_rng(3).normal(0.2, 1.0, size=50)
    first = bootstrap_interval(gains, 0.9, 1000, seed=7)
    assert first == bootstrap_interval(gains, 0.9, 1000, seed=7)
    assert first[0] < gains.mean() < first[1]


def test_a_consistent_win_is_promoted():
    decision = decide([[1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0]], 0.0, 0.95, 1000, seed=0)
    assert decision.promote
    assert (decision.gain, decision.ci_low, decision.ci_high) == (1.0, 1.0, 1.0)
    assert decision.win_rate == 1.0 and decision.prompts == 3


def test_a_win_smaller_than_the_margin_is_rejected():
    decision = decide([[0.1, 0.1]], [[0.0, 0.0]], 0.2, 0.95, 1000, seed=0)
    assert not decision.promote
    assert decision.ci_low > 0  # significant, but not by the margin
    assert "margin" in decision.reason


def test_a_positive_mean_whose_interval_reaches_zero_is_rejected():
    # gains 2, -1, -0.5, 0: mean +0.125, but resampling prompts often averages below zero
    decision = decide([[2.0, -1.0, -0.5, 0.0]], [[0.0, 0.0, 0.0, 0.0]], 0.0, 0.95, 2000, seed=0)
    assert decision.gain == pytest.approx(0.125)
    assert not decision.promote
    assert decision.ci_low < 0 < decision.ci_high
    assert "interval" in decision.reason


def test_ties_count_half_in_the_win_rate():
    decision = decide([[1.0, 0.0, 2.0, 3.0]], [[0.0, 0.0, 3.0, 3.0]], 0.0, 0.95, 1000, seed=0)
    assert decision.win_rate == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
