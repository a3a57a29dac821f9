"""`sample_with_logprobs(exact_kl=True)`: the exact per-token KL summed over a response, against
the sampled-token (k1) estimate it replaces in the PPO bench's held-out curve and in the evaluate
stage's `kl_to_sft` (`sample_policy(exact_kl=True)`): same expectation, never negative, less spread, and zero between a model and
itself."""

from __future__ import annotations

import statistics

import pytest
import torch

from alignflow.evaluation import sample_policy
from alignflow.models import load_causal_lm, load_tokenizer
from alignflow.rl.rollout import sample_with_logprobs
from tests.stage.ppo_setup import micro_models


@pytest.fixture(scope="module")
def models(pipeline_runs):
    return micro_models(pipeline_runs)


def _tokenizer_reference_and_policy(models):
    """The SFT model as reference, and a policy some way from it (about 1 nat per response)."""
    tokenizer = load_tokenizer(models.sft_dir)
    reference = load_causal_lm(models.sft_dir).eval()
    policy = load_causal_lm(models.sft_dir).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return tokenizer, reference, policy


def test_exact_kl_has_the_k1_mean_with_less_spread(models):
    tokenizer, reference, policy = _tokenizer_reference_and_policy(models)
    sampling = models.ppo_cfg.sampling
    prompts = [row["prompt"] for row in models.prompt_rows]
    exact, sampled_k1, same = [], [], []
    for seed in range(4):
        torch.manual_seed(seed)
        s = sample_with_logprobs(policy, reference, tokenizer, prompts, sampling, exact_kl=True)
        exact += s.exact_kl.tolist()
        sampled_k1 += s.sampled_kl.tolist()
        # the same draw again, scored against the policy itself
        torch.manual_seed(seed)
        itself = sample_with_logprobs(policy, policy, tokenizer, prompts, sampling, exact_kl=True)
        assert torch.equal(itself.response, s.response)
        same += itself.exact_kl.tolist()
    n = len(exact)
    assert n >= 64
    assert min(exact) >= 0.0
    assert max(abs(v) for v in same) < 1e-5
    # same expectation: the means agree within 3 standard errors of their difference
    diffs = [a - b for a, b in zip(exact, sampled_k1, strict=True)]
    assert abs(statistics.mean(diffs)) < 3 * statistics.stdev(diffs) / n**0.5
    assert statistics.mean(exact) > 0.5  # the perturbation moved the policy (about 1 nat)
    assert statistics.stdev(exact) < 0.8 * statistics.stdev(sampled_k1)  # measured 0.58x


def test_the_evaluation_reports_the_exact_kl_of_each_sample(models):
    tokenizer, reference, policy = _tokenizer_reference_and_policy(models)
    sampling = models.ppo_cfg.sampling
    prompts = [row["prompt"] for row in models.prompt_rows][:8]
    evaluated = sample_policy(
        policy, reference, tokenizer, prompts, sampling, 2, 7, 4, greedy=False, exact_kl=True
    )
    for index in range(2):  # sample i draws with seed + i, in batches of 4
        torch.manual_seed(7 + index)
        exact = []
        for start in (0, 4):
            batch = prompts[start : start + 4]
            s = sample_with_logprobs(policy, reference, tokenizer, batch, sampling, exact_kl=True)
            exact += s.exact_kl.tolist()
        assert evaluated.kl_to_reference[index] == pytest.approx(exact, abs=1e-6)
        assert min(evaluated.kl_to_reference[index]) >= 0.0
