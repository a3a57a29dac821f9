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

    The conversation is rendered with the chat template, so the score is read at the EOS that ends
    the assistant turn, as in reward-model training.
    """
    texts = [
        tokenizer.apply_chat_template(
            [*prompt, {"role": "assistant", "content": response}], tokenize=False
        )
        for prompt, response in zip(prompts, responses, strict=True)
    ]
    tokenizer.padding_side = "right"
    scores: list[float] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        batch = batch.to(reward_model.device)
        scores.extend(reward_model(**batch).logits[:, 0].float().tolist())
    return scores
