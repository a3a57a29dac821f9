"""Every PPO switch, exercised on the micro models for a few updates: each test checks the
observable effect of one setting (the math behind it is hand-checked in tests/unit)."""

from __future__ import annotations

import logging
import math
import shutil

import pytest
import torch

from alignflow.config import build_config
from alignflow.models import load_scalar_head_model, load_tokenizer
from alignflow.rl.rewards import RewardError, load_rewarder
from alignflow.rl.trainer import NonFiniteError
from tests.stage.ppo_setup import make_trainer, micro_models


@pytest.fixture(scope="module")
def models(pipeline_runs):
    return micro_models(pipeline_runs)


def run(models, tmp_path, updates: int = 2, **settings) -> list[dict]:
    trainer = make_trainer(models, tmp_path, updates=updates, **settings)
    return trainer.train()


def kl_settings(models, **kl):
    return models.ppo_cfg.kl.model_copy(update=kl)


def test_k1_estimator_penalises_the_log_ratio_and_k3_a_nonnegative_estimate(models, tmp_path):
    k1 = run(models, tmp_path / "k1", updates=3)
    k3 = run(models, tmp_path / "k3", updates=3, kl=kl_settings(models, estimator="k3"))
    # identical first updates (same seed); they part once the policy has moved
    assert k1[-1]["kl_estimate"] == pytest.approx(k1[-1]["kl"])
    assert k3[-1]["kl_estimate"] >= 0 and k3[-1]["kl_estimate"] != pytest.approx(k3[-1]["kl"])


def test_exact_estimator_penalises_the_distributions_kl_and_pulls_the_policy_back(models, tmp_path):
    exact = run(models, tmp_path / "exact", updates=3, kl=kl_settings(models, estimator="exact"))
    # policy and reference start equal: nothing to penalise, whatever token was sampled
    assert exact[0]["kl_estimate"] == pytest.approx(0.0, abs=1e-5)
    # once the policy has moved, the exact KL is positive (k1's sampled estimate may not be); the
    # loss's KL (a mean over the update's optimizer steps) from the first step on
    assert all(entry["kl_estimate"] > 0 for entry in exact[1:])
    assert all(entry["kl_loss"] > 0 for entry in exact)
    # whitened advantages: the loss's KL weight is the coefficient over their spread
    assert all(entry["kl_loss_coef"] != pytest.approx(entry["kl_coef"]) for entry in exact)
    # its gradient pulls towards the reference: a strong coefficient ends closer than none
    free = run(
        models, tmp_path / "free", updates=3, kl=kl_settings(models, estimator="exact", coef=0.0)
    )
    pulled = run(
        models, tmp_path / "pulled", updates=3, kl=kl_settings(models, estimator="exact", coef=20.0)
    )
    assert free[-1]["kl_loss_coef"] == 0.0
    assert pulled[-1]["kl_estimate"] < 0.5 * free[-1]["kl_estimate"]


def test_critic_warmup_trains_the_critic_alone_then_the_policy(models, tmp_path):
    weights = []  # (policy, critic) parameter sums after each update

    def snapshot(metrics: dict, step: int) -> None:
        weights.append(
            tuple(
                sum(p.detach().double().sum().item() for p in model.parameters())
                for model in (trainer.policy, trainer.value_model)
            )
        )

    trainer = make_trainer(models, tmp_path, updates=3, critic_warmup=2, log_metrics=snapshot)
    start = tuple(
        sum(p.detach().double().sum().item() for p in model.parameters())
        for model in (trainer.policy, trainer.value_model)
    )
    history = trainer.train()
    # the warm-up updates are value steps only: the policy stays as it started (its rollouts
    # have KL 0 to the reference, the third one included) while the critic moves
    assert [("policy_loss" in entry) for entry in history] == [False, False, True]
    assert all(entry["kl"] == pytest.approx(0.0, abs=1e-6) for entry in history)
    assert weights[0][0] == weights[1][0] == start[0]
    assert start[1] != weights[0][1] != weights[1][1]
    # then the policy trains as well
    assert weights[2][0] != start[0] and weights[2][1] != weights[1][1]
    with pytest.raises(ValueError, match="critic_warmup"):
        type(models.ppo_cfg).model_validate(
            {**models.ppo_cfg.model_dump(), "updates": 4, "critic_warmup": 4}
        )


def test_grad_norm_is_logged_before_max_grad_norm_clips_the_step(models, tmp_path):
    movement, norms = [], []
    for cap in (1e6, 1e-4):
        trainer = make_trainer(  # one optimizer step: the same rollout, the same gradient
            models, tmp_path / str(cap), updates=1, max_grad_norm=cap, minibatch_size=8,
            ppo_epochs=1,
        )  # fmt: skip
        trained = [p for p in trainer.policy.parameters() if p.requires_grad]
        start = [p.detach().clone() for p in trained]
        history = trainer.train()
        norms.append(history[0]["grad_norm"])
        movement.append(
            sum((p.detach() - s).abs().sum().item() for p, s in zip(trained, start, strict=True))
        )
    # the same step (same seed) logs the same norm, whatever the cap: the norm before clipping
    assert norms[0] == pytest.approx(norms[1], rel=1e-4) and norms[0] > 1e-4
    # gradients clipped to a norm of 1e-4 are per weight far below AdamW's eps (1e-5), so its
    # steps shrink with them: the capped policy barely moves
    assert 0 < movement[1] < 0.2 * movement[0]


def test_adaptive_kl_moves_the_coefficient_and_fixed_kl_keeps_it(models, tmp_path):
    fixed = run(models, tmp_path / "fixed", updates=3)
    adaptive = run(
        models, tmp_path / "adaptive", updates=3,
        kl=kl_settings(models, adaptive=True, target=1e3, horizon=16),
    )  # fmt: skip
    coef = models.ppo_cfg.kl.coef
    assert [entry["kl_coef"] for entry in fixed] == [coef] * 3
    # KL far below target: error clipped to -0.2, so beta *= 1 - 0.2 * 8 / 16 per update
    assert [entry["kl_coef"] for entry in adaptive] == pytest.approx(
        [coef, coef * 0.9, coef * 0.81]
    )


def test_reward_normalization_standardises_and_clipping_bounds_the_scores(models, tmp_path):
    raw = run(models, tmp_path / "raw", updates=1)
    normalized = run(models, tmp_path / "norm", updates=1, reward_normalization=True)
    samples: list[dict] = []
    clipped = make_trainer(
        models, tmp_path / "clip", updates=1, reward_clip=0.05, log_samples_every=1,
        samples_logged=8, log_samples=lambda rows, step: samples.extend(rows),
    )  # fmt: skip
    clipped.train()
    assert raw[0]["reward_used"] == pytest.approx(raw[0]["reward"])
    # first batch standardised by its own moments: mean 0
    assert normalized[0]["reward_used"] == pytest.approx(0.0, abs=1e-6)
    assert abs(raw[0]["reward"]) > 0.05
    assert all(abs(row["score"]) <= 0.05 for row in samples) and len(samples) == 8


def test_responses_without_eos_get_the_missing_eos_score(models, tmp_path):
    cut = models.ppo_cfg.sampling.model_copy(update={"max_new_tokens": 2})
    penalised = run(models, tmp_path / "pen", updates=1, sampling=cut)
    unpenalised = run(models, tmp_path / "free", updates=1, sampling=cut, missing_eos_score=None)
    assert penalised[0]["eos_rate"] == 0.0 and penalised[0]["response_length"] <= 2
    assert penalised[0]["reward"] == pytest.approx(models.ppo_cfg.missing_eos_score)
    assert unpenalised[0]["reward"] != pytest.approx(models.ppo_cfg.missing_eos_score)


def test_value_clipping_clips_most_value_updates_when_the_range_is_tiny(models, tmp_path):
    loose = run(models, tmp_path / "loose", updates=1, value_clip_range=100.0)
    tight = run(models, tmp_path / "tight", updates=1, value_clip_range=1e-6)
    # (a loose range still "clips" a few values where old + (v - old) rounds away from v)
    assert loose[0]["value_clipfrac"] < 0.05
    assert tight[0]["value_clipfrac"] > 0.4  # every minibatch after the first step


def test_entropy_bonus_keeps_the_policy_more_random(models, tmp_path):
    plain = run(models, tmp_path / "plain", updates=3, learning_rate=1e-3)
    bonus = run(models, tmp_path / "bonus", updates=3, learning_rate=1e-3, entropy_coef=1.0)
    assert bonus[-1]["entropy"] > plain[-1]["entropy"]


def test_whitened_advantages_make_the_first_full_batch_policy_loss_zero(models, tmp_path):
    one_step = {"updates": 1, "ppo_epochs": 1, "minibatch_size": 8}
    whitened = run(models, tmp_path / "w", **one_step)
    raw = run(models, tmp_path / "r", **one_step, whiten_advantages=False)
    # ratio is exactly 1 on the first step, so the loss is -mean(A): 0 once whitened
    assert whitened[0]["policy_loss"] == pytest.approx(0.0, abs=1e-6)
    assert abs(raw[0]["policy_loss"]) > 1e-3


def test_whitened_rewards_change_what_the_critic_is_trained_on(models, tmp_path):
    plain = run(models, tmp_path / "p", updates=1)
    whitened = run(models, tmp_path / "w", updates=1, whiten_rewards=True)
    assert plain[0]["reward"] == whitened[0]["reward"]  # same samples
    # whitening keeps the mean (shift_mean=False), so only the per-token returns differ
    assert whitened[0]["rlhf_reward"] == pytest.approx(plain[0]["rlhf_reward"], rel=1e-4)
    assert whitened[0]["value_loss"] != pytest.approx(plain[0]["value_loss"], rel=1e-3)


def test_epochs_and_minibatches_set_the_number_of_optimizer_steps(models, tmp_path):
    trainer = make_trainer(models, tmp_path, updates=2, ppo_epochs=3, minibatch_size=2)
    trainer.train()
    first_param = trainer.optimizer.param_groups[0]["params"][0]
    # 2 updates x 3 epochs x (8 rollouts / 2 per minibatch)
    assert trainer.optimizer.state[first_param]["step"].item() == 2 * 3 * 4


def test_generation_settings_bound_length_and_truncated_sampling_warns(models, tmp_path, caplog):
    sampling = models.ppo_cfg.sampling.model_copy(
        update={"max_new_tokens": 6, "top_k": 5, "top_p": 0.9, "temperature": 1.3}
    )
    with caplog.at_level(logging.WARNING, logger="alignflow.rl.trainer"):
        history = run(models, tmp_path, updates=1, sampling=sampling)
    assert history[0]["response_length"] <= 6
    assert any("KL estimate" in record.message for record in caplog.records)


def test_linear_schedule_decays_the_learning_rate_to_zero(models, tmp_path):
    history = run(models, tmp_path, updates=4, lr_schedule="linear", learning_rate=1e-4)
    assert [entry["learning_rate"] for entry in history] == pytest.approx(
        [1e-4, 0.75e-4, 0.5e-4, 0.25e-4]
    )


def test_kl_stop_ends_training_early_and_says_why(models, tmp_path):
    trainer = make_trainer(models, tmp_path, updates=6, kl_stop=1e-4, learning_rate=1e-3)
    history = trainer.train()
    assert 1 < len(history) < 6
    assert history[-1]["kl"] > 1e-4
    assert "exceeded policy.ppo.kl_stop" in trainer.stopped_early


def test_sample_tables_are_logged_every_n_updates(models, tmp_path):
    tables: dict[int, list[dict]] = {}
    make_trainer(
        models, tmp_path, updates=4, log_samples_every=2, samples_logged=3,
        log_samples=lambda rows, step: tables.setdefault(step, rows),
    ).train()  # fmt: skip
    assert sorted(tables) == [0, 2]
    row = tables[2][0]
    assert len(tables[2]) == 3 and set(row) == {"update", "prompt", "completion", "score", "kl"}
    assert row["prompt"] and isinstance(row["score"], float)


def test_a_nan_in_the_policy_stops_training_with_a_clear_error(models, tmp_path):
    trainer = make_trainer(models, tmp_path, updates=2)
    with torch.no_grad():
        trainer.policy.get_output_embeddings().weight[0, 0] = math.nan
    with pytest.raises(NonFiniteError, match="policy is not finite at update 0"):
        trainer.train()


def test_a_rule_reward_returning_nan_stops_training(models, tmp_path):
    cfg = build_config({"rewards": {"rules": [{"function": "tests.unit.test_rewards:nan_reward"}]}})
    tokenizer = load_tokenizer(models.sft_dir)
    rewarder = load_rewarder(cfg, [models.rm_dir], tokenizer)
    with pytest.raises(RewardError, match="nan_reward returned nan"):
        make_trainer(models, tmp_path, rewarder=rewarder, updates=1).train()


def test_ensemble_of_two_reward_models_reports_their_disagreement(models, tmp_path):
    # a second, different reward model: the first with its score head scaled
    second = tmp_path / "rm2"
    shutil.copytree(models.rm_dir, second)
    tokenizer = load_tokenizer(models.sft_dir)
    model = load_scalar_head_model(str(second), pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        model.score.weight.mul_(3.0)
    model.save_pretrained(second)
    cfg = build_config({"rewards": {"ensemble": "mean_minus_std", "extra_models": [str(second)]}})
    rewarder = load_rewarder(cfg, [models.rm_dir], tokenizer)
    assert len(rewarder.models) == 2
    history = make_trainer(models, tmp_path / "ppo", rewarder=rewarder, updates=1).train()
    # scores s and 3s (same bias-free head): mean 2s, std |s|, so mean - std = 2s - |s|
    assert history[0]["reward/reward_model_std"] > 0


def test_ppo_on_a_rule_reward_alone_raises_that_reward(models, tmp_path):
    cfg = build_config(
        {"rewards": {"model_weight": 0, "rules": [{"function": "alignflow.demo:oracle_reward"}]}}
    )
    rewarder = load_rewarder(cfg, [models.rm_dir], load_tokenizer(models.sft_dir))
    assert rewarder.models == []
    history = make_trainer(
        models, tmp_path, rewarder=rewarder, updates=12, rollout_batch_size=16,
        minibatch_size=8, learning_rate=3e-4,
    ).train()  # fmt: skip
    first = sum(entry["reward"] for entry in history[:3]) / 3
    last = sum(entry["reward"] for entry in history[-3:]) / 3
    assert last > first + 0.05
