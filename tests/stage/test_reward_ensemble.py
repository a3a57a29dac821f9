"""`reward_model.ensemble_size: 2` trains two reward models with different seeds, and the policy
stages score with both."""

from __future__ import annotations

import pytest
import torch

from alignflow.models import load_tokenizer
from alignflow.pipeline import tracking_context
from alignflow.rl.rewards import load_rewarder
from alignflow.stages.upstream import reward_model_dirs
from alignflow.store import StageResult
from tasks.reward import run_reward
from tests.conftest import micro_config


def _stage_result(pipeline_runs, stage: str) -> StageResult:
    from pathlib import Path

    output = Path(pipeline_runs.first["stages"][stage]["output"])
    return StageResult.model_validate_json((output / "result.json").read_text())


@pytest.mark.slow  # 17 s on a slow day: under make test-all for make test's 20 minutes
def test_two_member_ensemble_is_trained_and_scored_with(pipeline_runs, tmp_path):
    cfg = micro_config(tmp_path, "reward_model.ensemble_size=2", "rewards.ensemble=mean_minus_std")
    ctx = tracking_context(cfg, tags={})
    sft = _stage_result(pipeline_runs, "sft")
    prepared, collected = (
        _stage_result(pipeline_runs, "prepare"),
        _stage_result(pipeline_runs, "collect"),
    )
    result = run_reward(cfg, ctx, prepared, sft, collected)

    dirs = reward_model_dirs(cfg, result)
    assert [d.rsplit("/", 1)[1] for d in dirs] == ["model", "model-1"]
    # both members learned the preferences, each on its own seed
    assert result.metrics["accuracy"] > 0.6 and result.metrics["member_1_accuracy"] > 0.6
    assert result.metrics["ensemble_size"] == 2

    rewarder = load_rewarder(cfg, dirs, load_tokenizer(str(sft.path("model"))))
    heads = [model.score.weight for model in rewarder.models]
    assert not torch.equal(*heads)
    rows = [{"prompt": [{"role": "user", "content": "Review the Nimbus X2."}]}] * 2
    prompts, completions = [r["prompt"] for r in rows], ["Great!", "Sorry, I can't."]
    total, parts = rewarder.score(prompts, completions, rows)
    members = rewarder.model_scores(*rewarder.encode(prompts, completions)[:3])  # (2, b)
    assert torch.all(parts["reward_model_std"] > 0)
    # rewards.ensemble mean_minus_std: mean - 1 * population std of the two members
    assert torch.allclose(total, members.mean(0) - members.std(0, unbiased=False), atol=1e-5)
