"""A rule reward for the retraining tests: the demo oracle turned upside down, so a policy trained on
it gets measurably worse by the oracle's judgement."""

from alignflow.demo import oracle_reward


def inverted_oracle(prompts, completions, **columns) -> list[float]:
    return [-score for score in oracle_reward(prompts, completions, **columns)]
