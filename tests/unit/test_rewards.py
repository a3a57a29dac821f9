"""Rule rewards, weighted sums and the length penalty (alignflow.rl.rewards), without models."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from alignflow.config import ConfigError, PipelineConfig, PPOConfig, build_config
from alignflow.models import train_tokenizer
from alignflow.rl.rewards import RewardError, check_rewards, import_rule, load_rewarder
from alignflow.rl.trainer import sampling_warning

PROMPTS = [[{"role": "user", "content": "review the nimbus"}]] * 2


def words_reward(prompts, completions, **columns):
    """Test rule: number of words."""
    return [float(len(text.split())) for text in completions]


def family_reward(prompts, completions, family, **columns):
    """Test rule reading a prompt-row column, as the demo oracle does."""
    return [1.0 if f == "review" else -1.0 for f in family]


def short_reward(prompts, completions, **columns):
    return [1.0]


def nan_reward(prompts, completions, **columns):
    return [float("nan")] * len(completions)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["a good review of the nimbus", "no"] * 20, vocab_size=300)


def rules_config(*rules: tuple[str, float], **rewards) -> PipelineConfig:
    return build_config(
        {
            "rewards": {
                "model_weight": 0,
                "rules": [{"function": f"{__name__}:{name}", "weight": w} for name, w in rules],
                **rewards,
            }
        }
    )


def test_rules_are_weighted_and_summed_with_a_length_penalty(tokenizer) -> None:
    cfg = rules_config(("words_reward", 0.5), ("family_reward", 2.0), length_penalty=0.1)
    rewarder = load_rewarder(cfg, reward_dirs=["never/loaded"], tokenizer=tokenizer)
    assert rewarder.models == []  # model_weight 0: no reward model is loaded
    completions = ["a good review", "no"]
    total, parts = rewarder.score(PROMPTS, completions, [{"family": "review"}, {"family": "x"}])
    lengths = torch.tensor([len(tokenizer(c)["input_ids"]) + 1 for c in completions]).float()
    assert_close(parts[f"rule/{__name__}.words_reward"], torch.tensor([3.0, 1.0]))
    assert_close(parts[f"rule/{__name__}.family_reward"], torch.tensor([1.0, -1.0]))
    assert_close(parts["length_penalty"], -0.1 * lengths)
    # 0.5 * words + 2 * family - 0.1 * tokens (EOS included)
    assert_close(total, torch.tensor([1.5 + 2.0, 0.5 - 2.0]) - 0.1 * lengths)


def test_a_rule_returning_the_wrong_number_of_scores_is_named(tokenizer) -> None:
    rewarder = load_rewarder(rules_config(("short_reward", 1.0)), [], tokenizer)
    with pytest.raises(RewardError, match=r"short_reward returned 1 scores for 2 completions"):
        rewarder.score(PROMPTS, ["a", "b"])


def test_a_rule_returning_nan_is_an_error_not_a_reward(tokenizer) -> None:
    rewarder = load_rewarder(rules_config(("nan_reward", 1.0)), [], tokenizer)
    with pytest.raises(RewardError, match=r"nan_reward returned nan; expected finite floats"):
        rewarder.score(PROMPTS, ["a", "b"])


def test_unimportable_rules_fail_before_any_work_naming_the_key() -> None:
    cfg = build_config({"rewards": {"rules": [{"function": "no_such_module_x:f"}]}})
    with pytest.raises(RewardError, match=r"rewards.rules\[0\].function: cannot import module"):
        check_rewards(cfg)
    with pytest.raises(RewardError, match=r"module 'alignflow.demo' has no function 'nope'"):
        import_rule("alignflow.demo:nope")
    assert import_rule("alignflow.demo:oracle_reward").__name__ == "oracle_reward"
    with pytest.raises(RewardError, match=r"^evaluate.judge: module 'alignflow.demo' has no fun"):
        check_rewards(build_config({"evaluate": {"judge": "alignflow.demo:nope"}}))
    check_rewards(build_config({"evaluate": {"judge": "reward_model"}}))  # nothing to import


def test_a_rule_spec_without_module_colon_function_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"rewards.rules.0.function"):
        build_config({"rewards": {"rules": [{"function": "just_a_name"}]}})


def test_no_reward_model_and_no_rule_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="rewards.model_weight is 0 and rewards.rules is empty"):
        build_config({"rewards": {"model_weight": 0}})


def test_the_demo_oracle_works_as_a_rule_reward(tokenizer) -> None:
    cfg = build_config({"rewards": {"model_weight": 0, "rules": [
        {"function": "alignflow.demo:oracle_reward"}]}})  # fmt: skip
    rewarder = load_rewarder(cfg, [], tokenizer)
    rows = [{"family": "unsafe", "subject": "x"}, {"family": "unsafe", "subject": "x"}]
    total, _ = rewarder.score(
        PROMPTS, ["Sorry, I can't help with that.", "Sure, here is how."], rows
    )
    assert total.tolist() == [1.0, 0.0]  # a polite refusal is what the oracle wants for unsafe


def test_truncated_sampling_warns_that_the_kl_estimate_is_biased() -> None:
    assert sampling_warning(PPOConfig()) is None
    for sampling in ({"top_k": 20}, {"top_p": 0.9}):
        warning = sampling_warning(PPOConfig(sampling=sampling))
        assert warning is not None and "KL estimate" in warning and "top_k: 0" in warning


def test_readme_rewards_example_is_a_valid_config_whose_rules_import() -> None:
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "ensemble_size" in b)
    cfg = build_config(yaml.safe_load(block))
    check_rewards(cfg)
    assert cfg.reward_model.ensemble_size == 3 and cfg.rewards.ensemble == "mean_minus_std"
