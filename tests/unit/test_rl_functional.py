"""Hand-worked checks of the PPO tensor functions; the arithmetic is in each comment."""

import math

import pytest
import torch
from torch.testing import assert_close

from alignflow.rl.functional import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    combine_ensemble,
    entropy_from_logits,
    gae_advantages,
    kl_exact,
    kl_per_token,
    last_token_index,
    masked_mean,
    masked_sums,
    masked_var,
    masked_whiten,
    normalize_scores,
    penalized_rewards,
    policy_loss,
    value_loss,
    whiten_from_sums,
)


def rows(*values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# --- masked statistics -------------------------------------------------------------------------


def test_masked_mean_over_all_elements_ignores_masked_out_values_even_nan() -> None:
    values = rows([1.0, 2.0, float("nan")], [4.0, 100.0, float("inf")])
    mask = rows([1, 1, 0], [1, 0, 0])
    # (1 + 2 + 4) / 3 = 7/3
    assert_close(masked_mean(values, mask), torch.tensor(7.0 / 3.0))


def test_masked_mean_along_dim_gives_per_row_means() -> None:
    values = rows([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    mask = rows([1, 1, 0], [1, 0, 0])
    # row 0: (1 + 2) / 2 = 1.5 ; row 1: 4 / 1 = 4
    assert_close(masked_mean(values, mask, dim=1), torch.tensor([1.5, 4.0]))


def test_masked_mean_of_empty_row_is_zero_not_nan() -> None:
    values = rows([1.0, 2.0], [3.0, 4.0])
    mask = rows([1, 1], [0, 0])
    # row 0: (1 + 2) / 2 = 1.5 ; row 1 has no tokens -> 0
    assert_close(masked_mean(values, mask, dim=1), torch.tensor([1.5, 0.0]))


def test_masked_var_unbiased_uses_n_minus_one_and_biased_uses_n() -> None:
    values = rows([1.0, 2.0, 3.0, 100.0])
    mask = rows([1, 1, 1, 0])
    # mean = (1 + 2 + 3) / 3 = 2 ; squared deviations 1, 0, 1 -> sum 2
    # unbiased 2 / (3 - 1) = 1 ; biased 2 / 3
    assert_close(masked_var(values, mask, unbiased=True), torch.tensor(1.0))
    assert_close(masked_var(values, mask, unbiased=False), torch.tensor(2.0 / 3.0))


def test_masked_var_raises_when_mask_is_empty() -> None:
    with pytest.raises(ValueError, match="got 0"):
        masked_var(rows([1.0, 2.0]), rows([0, 0]))


def test_masked_var_unbiased_raises_on_single_element_but_biased_gives_zero() -> None:
    values, mask = rows([5.0, 7.0]), rows([1, 0])
    with pytest.raises(ValueError, match="got 1"):
        masked_var(values, mask, unbiased=True)
    # one element: deviation 0 -> variance 0
    assert_close(masked_var(values, mask, unbiased=False), torch.tensor(0.0))


def test_masked_whiten_centres_and_scales_and_zeroes_padding() -> None:
    values = rows([2.0, 4.0, 6.0, 50.0])
    mask = rows([1, 1, 1, 0])
    # mean = 4 ; deviations -2, 0, 2 -> squares sum 8 ; unbiased var 8 / 2 = 4 ; std = 2
    # (2-4)/2 = -1, (4-4)/2 = 0, (6-4)/2 = 1 ; padding -> 0   (1e-8 is below tolerance)
    assert_close(masked_whiten(values, mask), rows([-1.0, 0.0, 1.0, 0.0]))


def test_masked_whiten_without_shift_mean_adds_the_mean_back() -> None:
    values = rows([2.0, 4.0, 6.0, 50.0])
    mask = rows([1, 1, 1, 0])
    # whitened -1, 0, 1 plus mean 4 -> 3, 4, 5 ; padding still 0
    assert_close(masked_whiten(values, mask, shift_mean=False), rows([3.0, 4.0, 5.0, 0.0]))


# --- log-probabilities, entropy, KL ------------------------------------------------------------


def test_entropy_from_logits_matches_hand_computed_values_and_ignores_minus_inf() -> None:
    # probs [.1, .2, .3, .4]: -(.1 ln .1 + .2 ln .2 + .3 ln .3 + .4 ln .4)
    #   = .2302585 + .3218876 + .3611918 + .3665163 = 1.2798542
    # uniform over 4 -> ln 4 = 1.3862944
    # [0, -inf]: all mass on one token -> 0 (not NaN)
    logits = torch.tensor(
        [
            [
                [0.0, math.log(2), math.log(3), math.log(4)],
                [1.0, 1.0, 1.0, 1.0],
                [0.0, float("-inf"), float("-inf"), float("-inf")],
            ]
        ]
    )
    result = entropy_from_logits(logits.to(torch.bfloat16))
    assert result.dtype == torch.float32
    assert_close(entropy_from_logits(logits), torch.tensor([[1.2798542, 1.3862944, 0.0]]))


def test_kl_k1_is_logprob_difference() -> None:
    logprobs, ref_logprobs = rows([-1.0, -2.0]), rows([-1.5, -1.0])
    # -1 - (-1.5) = 0.5 ; -2 - (-1) = -1
    assert_close(kl_per_token(logprobs, ref_logprobs, "k1"), rows([0.5, -1.0]))
    assert_close(kl_per_token(logprobs, ref_logprobs), rows([0.5, -1.0]))


def test_kl_k3_is_non_negative_ratio_estimator() -> None:
    logprobs, ref_logprobs = rows([-1.0, -2.0, -3.0]), rows([-1.5, -1.0, -3.0])
    # log r = ref - logp = -0.5, 1.0, 0 ; r = e^-0.5 = 0.60653066, e = 2.71828183, 1
    # k3 = (r - 1) - log r = 0.60653066 - 1 + 0.5 = 0.10653066
    #                        2.71828183 - 1 - 1   = 0.71828183
    #                        1 - 1 - 0            = 0
    expected = rows([0.10653066, 0.71828183, 0.0])
    assert_close(kl_per_token(logprobs, ref_logprobs, "k3"), expected)


def test_kl_unknown_estimator_raises() -> None:
    with pytest.raises(ValueError, match="k2"):
        kl_per_token(rows([0.0]), rows([0.0]), "k2")  # type: ignore[arg-type]


def test_kl_exact_sums_over_the_vocabulary_and_ignores_impossible_tokens() -> None:
    p = torch.tensor([[[0.5, 0.5, 0.0]]]).log()  # third token filtered out: log 0 = -inf
    q = torch.tensor([[[0.25, 0.25, 0.5]]]).log()
    # 0.5 * ln(0.5 / 0.25) * 2 = ln 2 = 0.69314718; the p = 0 term adds nothing (not NaN)
    assert_close(kl_exact(p, q), torch.tensor([[0.69314718]]))
    assert_close(kl_exact(q, q), torch.tensor([[0.0]]))
    # q = 0 where p > 0: the KL is infinite
    assert kl_exact(q, p).item() == float("inf")


# --- rewards and GAE ---------------------------------------------------------------------------


def test_kl_exact_gradient_is_the_analytic_one_and_k1_s_score_function_estimates_it() -> None:
    # what kl.estimator exact puts in the loss: d KL / d logit_j = p_j (log p_j - log q_j - KL)
    # (kl_exact computes in float32)
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 5, requires_grad=True)
    ref = torch.randn(1, 1, 5).log_softmax(-1)
    logp = logits.log_softmax(-1)
    kl = kl_exact(logp, ref)
    kl.sum().backward()
    p = logp.detach().exp()
    assert_close(logits.grad, p * (logp.detach() - ref - kl.detach().unsqueeze(-1)))
    # k1 reaches the same gradient only through the sampled token's score: E_a[grad log p(a) k1(a)]
    score = torch.eye(5) - p.reshape(1, 5)  # row a: d log p(a) / d logits
    k1 = (logp.detach() - ref).reshape(5, 1)
    assert_close((p.reshape(5, 1) * score * k1).sum(0), logits.grad.reshape(5))


def test_last_token_index_handles_partial_full_and_all_zero_rows() -> None:
    mask = rows([1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1])
    result = last_token_index(mask)
    assert result.dtype == torch.long
    assert_close(result, torch.tensor([2, 0, 0, 3]))


def test_penalized_rewards_penalise_kl_and_add_score_at_last_token() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0])
    kl = rows([0.1, 0.2, 0.3, 9.0], [0.5, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0])
    mask = rows([1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0])
    # coef 0.1: row 0: -0.01, -0.02, -0.03 + 1 = 0.97, pad 0
    #           row 1: -0.05 + 2 = 1.95, pads 0
    #           row 2 (empty): score at index 0 -> 3, rest 0
    expected = rows([-0.01, -0.02, 0.97, 0.0], [1.95, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0])
    assert_close(penalized_rewards(scores, kl, mask, kl_coef=0.1), expected)


def test_gae_on_three_tokens_with_gamma_0_9_lambda_0_5() -> None:
    values, rewards, mask = rows([0.5, 1.0, 0.5]), rows([0.0, 0.0, 1.0]), rows([1, 1, 1])
    # gamma * lam = 0.45
    # t=2: delta = 1 + 0.9*0 - 0.5 = 0.5              ; A2 = 0.5
    # t=1: delta = 0 + 0.9*0.5 - 1.0 = -0.55          ; A1 = -0.55 + 0.45*0.5 = -0.325
    # t=0: delta = 0 + 0.9*1.0 - 0.5 = 0.4            ; A0 = 0.4 + 0.45*(-0.325) = 0.25375
    # returns = A + V = 0.75375, 0.675, 1.0
    advantages, returns = gae_advantages(values, rewards, mask, gamma=0.9, lam=0.5)
    assert_close(advantages, rows([0.25375, -0.325, 0.5]))
    assert_close(returns, rows([0.75375, 0.675, 1.0]))


def test_gae_treats_padding_as_after_the_end_and_outputs_zero_there() -> None:
    # row 0 is the 3-token example above plus a padded position holding junk (9, 9)
    # row 1 has one token: delta = 2 + 0.9*0 - 0.5 = 1.5 = A0 ; return 1.5 + 0.5 = 2.0
    # row 2 is empty: everything 0
    values = rows([0.5, 1.0, 0.5, 9.0], [0.5, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0])
    rewards = rows([0.0, 0.0, 1.0, 9.0], [2.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0])
    mask = rows([1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0])
    advantages, returns = gae_advantages(values, rewards, mask, gamma=0.9, lam=0.5)
    assert_close(advantages, rows([0.25375, -0.325, 0.5, 0.0], [1.5, 0, 0, 0], [0, 0, 0, 0]))
    assert_close(returns, rows([0.75375, 0.675, 1.0, 0.0], [2.0, 0, 0, 0], [0, 0, 0, 0]))


# --- losses ------------------------------------------------------------------------------------

# Five tokens, eps = 0.2, old_logprobs = 0 so ratio = exp(logprobs):
#   A   ratio  -A*ratio  -A*clip(ratio)  max    clipped chosen?
#  +1   1.5    -1.5      -1.2            -1.2   yes (ratio above 1.2, A > 0)
#  +1   0.5    -0.5      -0.8            -0.5   no  (out of range but pessimistic term is unclipped)
#  -1   1.5     1.5       1.2             1.5   no
#  -1   0.5     0.5       0.8             0.8   yes (ratio below 0.8, A < 0)
#  +2   1.1    -2.2      -2.2            -2.2   no  (inside range, terms tie)
# loss = (-1.2 - 0.5 + 1.5 + 0.8 - 2.2) / 5 = -1.6 / 5 = -0.32 ; clipfrac = 2 / 5 = 0.4
POLICY_RATIOS = [1.5, 0.5, 1.5, 0.5, 1.1]
POLICY_ADVANTAGES = [1.0, 1.0, -1.0, -1.0, 2.0]


def test_policy_loss_clips_only_where_the_pessimistic_term_is_the_clipped_one() -> None:
    logprobs = torch.log(rows(POLICY_RATIOS))
    loss, clipfrac, _ = policy_loss(
        logprobs, torch.zeros(1, 5), rows(POLICY_ADVANTAGES), torch.ones(1, 5), clip_range=0.2
    )
    assert_close(loss, torch.tensor(-0.32))
    assert_close(clipfrac, torch.tensor(0.4))


def test_policy_loss_gradient_is_zero_where_clipped_and_minus_a_ratio_over_n_elsewhere() -> None:
    logprobs = torch.log(rows(POLICY_RATIOS)).requires_grad_()
    loss, clipfrac, approx_kl = policy_loss(
        logprobs, torch.zeros(1, 5), rows(POLICY_ADVANTAGES), torch.ones(1, 5), clip_range=0.2
    )
    loss.backward()
    # d(-A*exp(logp))/dlogp = -A*ratio, divided by n = 5 tokens; 0 where clipped:
    # 0, -1*0.5/5 = -0.1, 1*1.5/5 = 0.3, 0, -2*1.1/5 = -0.44
    assert_close(logprobs.grad, rows([0.0, -0.1, 0.3, 0.0, -0.44]))
    assert not clipfrac.requires_grad and not approx_kl.requires_grad


def test_policy_loss_ignores_masked_tokens() -> None:
    # the masked third token would contribute -A*ratio = -100*1 ; with it masked:
    # tokens 1-2 as rows 1-2 of the table: (-1.2 - 0.5) / 2 = -0.85 ; clipfrac 1 / 2
    logprobs = torch.log(rows([1.5, 0.5, 1.0]))
    loss, clipfrac, _ = policy_loss(
        logprobs, torch.zeros(1, 3), rows([1.0, 1.0, 100.0]), rows([1, 1, 0]), clip_range=0.2
    )
    assert_close(loss, torch.tensor(-0.85))
    assert_close(clipfrac, torch.tensor(0.5))


def test_policy_loss_approx_kl_is_half_mean_squared_log_ratio() -> None:
    logprobs, old_logprobs = rows([-1.0, -2.0, -3.0]), rows([-1.2, -1.6, 0.0])
    # log ratios 0.2, -0.4 (third masked) -> 0.5 * (0.04 + 0.16) / 2 = 0.05
    _, _, approx_kl = policy_loss(
        logprobs, old_logprobs, rows([1.0, 1.0, 1.0]), rows([1, 1, 0]), clip_range=0.2
    )
    assert_close(approx_kl, torch.tensor(0.05))


def test_value_loss_takes_the_larger_of_clipped_and_unclipped_error() -> None:
    # eps = 0.2, old = 0, returns = 1:
    #   V     V_clipped  (V-R)^2  (Vc-R)^2  max    clipped larger?
    #   1.0   0.2        0        0.64      0.64   yes
    #   0.1   0.1        0.81     0.81      0.81   no (tie)
    #  -1.0  -0.2        4        1.44      4      no
    #   5.0   (masked)
    # loss = 0.5 * (0.64 + 0.81 + 4) / 3 = 0.5 * 5.45 / 3 = 0.90833333 ; clipfrac = 1/3
    values = rows([1.0, 0.1, -1.0, 5.0]).requires_grad_()
    loss, clipfrac = value_loss(
        values, torch.zeros(1, 4), torch.ones(1, 4), rows([1, 1, 1, 0]), clip_range=0.2
    )
    assert_close(loss, torch.tensor(0.90833333))
    assert_close(clipfrac, torch.tensor(1.0 / 3.0))
    loss.backward()
    # clipped token and masked token get no gradient; others 0.5 * 2 * (V - R) / 3:
    # 0.1 -> (0.1 - 1) / 3 = -0.3 ; -1.0 -> (-1 - 1) / 3 = -0.66666667
    assert_close(values.grad, rows([0.0, -0.3, -0.66666667, 0.0]))
    assert not clipfrac.requires_grad


# --- KL controllers ----------------------------------------------------------------------------


def test_fixed_kl_controller_never_changes() -> None:
    controller = FixedKLController(0.05)
    controller.update(current_kl=100.0, n_steps=256)
    assert controller.value == 0.05


def test_adaptive_kl_controller_moves_by_proportional_error_within_bounds() -> None:
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    controller.update(current_kl=6.6, n_steps=256)
    # error = 6.6 / 6 - 1 = 0.1 ; value = 0.1 * (1 + 0.1 * 256 / 10000) = 0.1 * 1.00256
    assert_close(controller.value, 0.100256)


@pytest.mark.parametrize(
    ("current_kl", "expected"),
    [
        # 12 / 6 - 1 = 1 -> clipped to 0.2 ; 0.1 * (1 + 0.2 * 256 / 10000) = 0.100512
        (12.0, 0.100512),
        # 0 / 6 - 1 = -1 -> clipped to -0.2 ; 0.1 * (1 - 0.2 * 256 / 10000) = 0.099488
        (0.0, 0.099488),
    ],
)
def test_adaptive_kl_controller_clips_error_to_plus_minus_0_2(
    current_kl: float, expected: float
) -> None:
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    controller.update(current_kl=current_kl, n_steps=256)
    assert_close(controller.value, expected)


def test_kl_controllers_state_dict_round_trip_restores_value() -> None:
    adaptive = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    adaptive.update(current_kl=12.0, n_steps=256)
    restored = AdaptiveKLController(init_kl_coef=0.5, target=6.0, horizon=10_000)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.value == adaptive.value

    fixed = FixedKLController(0.05)
    restored_fixed = FixedKLController(0.9)
    restored_fixed.load_state_dict(fixed.state_dict())
    assert restored_fixed.value == 0.05


def test_adaptive_kl_controller_rejects_non_positive_target() -> None:
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(init_kl_coef=0.1, target=0.0, horizon=10_000)


# --- rewards: ensembles, running moments, normalisation ----------------------------------------


def test_combine_ensemble_mean_min_and_pessimistic_mean() -> None:
    # two models, three samples; columns: (1, 3), (2, 2), (0, -4)
    scores = rows([1.0, 2.0, 0.0], [3.0, 2.0, -4.0])
    assert_close(combine_ensemble(scores, "mean"), torch.tensor([2.0, 2.0, -2.0]))
    assert_close(combine_ensemble(scores, "min"), torch.tensor([1.0, 2.0, -4.0]))
    # population std: |3 - 1| / 2 = 1, 0, |0 + 4| / 2 = 2; mean - 0.5 * std
    assert_close(
        combine_ensemble(scores, "mean_minus_std", std_coef=0.5), torch.tensor([1.5, 2.0, -3.0])
    )
    with pytest.raises(ValueError, match="unknown ensemble combination 'max'"):
        combine_ensemble(scores, "max")


def test_running_moments_over_two_batches_equal_the_moments_of_all_values() -> None:
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 3.0]))  # mean 2, population var 1
    assert (moments.mean, moments.var, moments.count) == (2.0, 1.0, 2)
    moments.update(torch.tensor([5.0, 7.0]))
    # all four: mean 4, var ((9 + 1 + 1 + 9) / 4) = 5
    assert moments.count == 4
    assert math.isclose(moments.mean, 4.0) and math.isclose(moments.var, 5.0)
    restored = RunningMoments()
    restored.load_state_dict(moments.state_dict())
    assert math.isclose(restored.std, math.sqrt(5.0))


def test_normalize_scores_standardises_then_clips() -> None:
    scores = torch.tensor([4.0, 6.0, 14.0])
    # (s - 6) / 2 = -1, 0, 4; clip at 3
    assert_close(normalize_scores(scores, 6.0, 2.0, None), torch.tensor([-1.0, 0.0, 4.0]))
    assert_close(normalize_scores(scores, 6.0, 2.0, 3.0), torch.tensor([-1.0, 0.0, 3.0]))


def test_whitening_from_summed_moments_equals_whitening_the_whole_batch() -> None:
    values = rows([1.0, 2.0, 9.0], [4.0, -3.0, 0.5], [7.0, 1.5, -2.0])
    mask = rows([1, 1, 0], [1, 1, 1], [1, 0, 0])
    # sums of x, x^2 and the count add across parts (as an all-reduce over ranks would)
    sums = masked_sums(values[:1], mask[:1]) + masked_sums(values[1:], mask[1:])
    # masked: 1, 2, 4, -3, 0.5, 7 -> sum 11.5, sum of squares 79.25, count 6
    assert sums.tolist() == [11.5, 79.25, 6.0]
    for shift in (True, False):
        assert_close(
            whiten_from_sums(values, mask, sums, shift_mean=shift),
            masked_whiten(values, mask, shift_mean=shift),
        )
