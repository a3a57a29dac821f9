"""Rejection-sampling fine-tuning (best-of-n distillation, as in RAFT and Llama 2's rejection
sampling): sample n completions per RL prompt from the SFT model, keep the best by our rewards,
then fine-tune the SFT model on the kept ones with TRL's SFTTrainer."""

from __future__ import annotations

from pathlib import Path

import torch

from alignflow import distributed, tracking
from alignflow.algorithms import PolicyInputs
from alignflow.algorithms.common import fit, load_sft, lora, save_policy, training_args
from alignflow.config import PipelineConfig, RFTConfig


def best_of_n(rewards: torch.Tensor, keep_fraction: float) -> list[tuple[int, int]]:
    """Which samples to keep: each prompt's best, then the best `keep_fraction` of those.

    Args: rewards (prompts, n). Returns (prompt index, sample index) pairs, best first.
    """
    best_reward, best_sample = rewards.max(dim=1)
    kept = max(1, round(keep_fraction * len(best_reward)))
    order = best_reward.argsort(descending=True)[:kept]
    return [(int(p), int(best_sample[p])) for p in order]


def sample_and_score(cfg: PipelineConfig, section: RFTConfig, model, tokenizer, inputs):
    """n samples per RL prompt and their rewards. Returns (texts [prompt][sample], rewards (p, n)).

    Under N processes each rank samples and scores a contiguous share of the prompts (with its own
    seed) and every rank gets all of them, in prompt order, to pick the same kept rows.
    """
    rows, processes = inputs.rl_prompts, distributed.world_size()
    share = slice(*_share_bounds(len(rows), distributed.rank(), processes))
    torch.manual_seed(cfg.run.seed + distributed.rank())
    mine = _sample_and_score_rows(cfg, section, model, tokenizer, inputs.reward_dirs, rows[share])
    parts = [distributed.broadcast_object(mine, src) for src in range(processes)]
    return [texts for part, _ in parts for texts in part], torch.cat([r for _, r in parts])


def _share_bounds(count: int, rank: int, processes: int) -> tuple[int, int]:
    """[start, stop) of rank `rank`'s share of `count` items split as evenly as can be."""
    return count * rank // processes, count * (rank + 1) // processes


def _sample_and_score_rows(cfg, section: RFTConfig, model, tokenizer, reward_dirs, rows):
    from alignflow.rl.rewards import load_rewarder
    from alignflow.rl.rollout import sample_texts

    n, batch = section.samples_per_prompt, section.generation_batch_size
    repeated = [row for row in rows for _ in range(n)]
    texts = sample_texts(
        model.eval(), tokenizer, [row["prompt"] for row in repeated], section.sampling,
        batch, desc="rft: sampling",
    )  # fmt: skip
    rewarder = load_rewarder(cfg, reward_dirs, tokenizer, model.device)
    rewards = [
        rewarder.score(
            [row["prompt"] for row in repeated[i : i + batch]],
            texts[i : i + batch],
            repeated[i : i + batch],
        )[0].cpu()
        for i in range(0, len(texts), batch)
    ]
    rewards = torch.cat(rewards) if rewards else torch.empty(0)
    return [texts[i * n : (i + 1) * n] for i in range(len(rows))], rewards.view(len(rows), n)


def train_rft(cfg: PipelineConfig, inputs: PolicyInputs, work: Path) -> dict[str, float]:
    from trl import SFTConfig, SFTTrainer

    from alignflow.models import tokenize_conversations

    section = cfg.policy.rft
    if not inputs.rl_prompts:
        raise ValueError("policy.algorithm rft needs RL prompts (prepare's rl_prompts.jsonl)")
    model, tokenizer = load_sft(cfg, inputs.sft_dir, str(distributed.device()))
    texts, rewards = sample_and_score(cfg, section, model, tokenizer, inputs)
    kept = best_of_n(rewards, section.keep_fraction)
    conversations = [
        {
            "messages": [
                *inputs.rl_prompts[p]["prompt"],
                {"role": "assistant", "content": texts[p][s]},
            ]
        }
        for p, s in kept
    ]
    sampled = {
        "sample_reward_mean": rewards.mean().item(),
        "kept_reward_mean": torch.stack([rewards[p, s] for p, s in kept]).mean().item(),
        "kept_rows": len(kept),
    }
    tracking.log_metrics(sampled)
    # Loss on the kept replies only, via the chat template's generation markers (as the SFT stage).
    dataset, _ = tokenize_conversations(tokenizer, conversations)
    trainer = SFTTrainer(
        model=model.train(),
        args=SFTConfig(**training_args(cfg, section, work)),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora(section, model),
    )
    losses = fit(trainer, work, section.save_minutes, "rft")
    save_policy(trainer, tokenizer, work, "policy.rft.learning_rate")
    return {**sampled, **losses}
