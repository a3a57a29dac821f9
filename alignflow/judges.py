"""A trained reward model as a scorer of (prompt, response) pairs."""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def reward_model_scores(
    reward_model,
    tokenizer,
    prompts: Sequence[list[dict]],
    responses: Sequence[str],
    batch_size: int = 64,
) -> list[float]:
    """Score each (prompt, response) with a sequence-classification reward model.

    The one scorer of the pipeline: the layout PPO scores its rollouts in
    (`alignflow.rl.rollout.encode_completions`: the prompt with its generation prompt, then the
    reply as the chat template writes it, ending at its end-of-turn token), read at that token, as
    the reward model was trained (`alignflow.stages.reward.preference_ids`).
    """
    from alignflow.rl.rollout import completion_batches, token_scores

    reward_model.eval()
    scores: list[float] = []
    batches = completion_batches(tokenizer, prompts, responses, batch_size, reward_model.device)
    for sequence, attention, query_len, mask in batches:
        rows = torch.arange(sequence.shape[0], device=sequence.device)
        at_eos = query_len + mask.sum(-1) - 1
        scores.extend(token_scores(reward_model, sequence, attention)[rows, at_eos].tolist())
    return scores
