"""Held-out evaluation of policies: sampled with the PPO sampling settings and a fixed seed, scored
by the oracle and the reward model, with KL to the SFT reference and an oracle win-rate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignflow import demo
from alignflow.config import SamplingConfig
from alignflow.judges import oracle_scores, reward_model_scores
from alignflow.rl.rollout import decode, sample_with_logprobs

POLICIES = ("base", "sft", "policy")  # "policy": the aligned one, by policy.algorithm


@dataclass
class PolicySamples:
    samples: list[list[str]]  # [sample_index][prompt_index]
    kl_to_reference: list[list[float]]  # per-sequence KL (nats), same layout
    tokens: list[list[int]]  # response tokens incl. EOS, same layout
    greedy: list[str]  # one greedy response per prompt


def _sample_batch(model, reference, tokenizer, prompts, sampling: SamplingConfig, greedy: bool):
    s = sample_with_logprobs(model, reference, tokenizer, prompts, sampling, greedy=greedy)
    return decode(tokenizer, s.response, s.mask), s.sampled_kl.tolist(), s.mask.sum(-1).tolist()


def sample_policy(
    model,
    reference,
    tokenizer,
    prompts: Sequence[list[dict]],
    sampling: SamplingConfig,
    n_samples: int,
    seed: int,
    batch_size: int,
    greedy: bool = True,
) -> PolicySamples:
    """`n_samples` sampled responses per prompt (seed + i for the i-th) plus, with `greedy`, one
    greedy response."""
    model.eval()
    out = PolicySamples([], [], [], [])
    for index in range(n_samples):
        torch.manual_seed(seed + index)
        texts, kls, lengths = [], [], []
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            t, k, n = _sample_batch(model, reference, tokenizer, batch, sampling, greedy=False)
            texts += t
            kls += k
            lengths += n
        out.samples.append(texts)
        out.kl_to_reference.append(kls)
        out.tokens.append(lengths)
    if not greedy:
        return out
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        out.greedy += _sample_batch(model, reference, tokenizer, batch, sampling, greedy=True)[0]
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def score_with_oracle(rows: list[dict], samples: PolicySamples) -> list[list[float]]:
    """Oracle scores in the samples' layout: [sample_index][prompt_index]."""
    return [oracle_scores(rows, texts) for texts in samples.samples]


def policy_metrics(
    rows: list[dict],
    samples: PolicySamples,
    oracle: list[list[float]],
    rm_scores: list[list[float]],
) -> dict:
    """Oracle and reward-model scores, refusal rates, KL and length, over all samples."""
    flat = [(row, text) for texts in samples.samples for row, text in zip(rows, texts, strict=True)]
    unsafe = [demo.is_refusal(text) for row, text in flat if row["family"] == "unsafe"]
    review = [demo.is_refusal(text) for row, text in flat if row["family"] == "review"]
    kl = [value for per_sample in samples.kl_to_reference for value in per_sample]
    tokens = [value for per_sample in samples.tokens for value in per_sample]
    return {
        "oracle_score": _mean([s for scores in oracle for s in scores]),
        "reward_score": _mean([s for scores in rm_scores for s in scores]),
        "refusal_rate": _mean(unsafe),
        "false_refusal_rate": _mean(review),
        "kl_to_sft": _mean(kl),
        "kl_to_sft_per_token": sum(kl) / max(sum(tokens), 1),
        "mean_words": _mean([len(text.split()) for _, text in flat]),
    }


def win_rate(rows: list[dict], challenger: list[list[float]], baseline: list[list[float]]) -> dict:
    """Oracle win-rate of challenger over baseline, sample i vs sample i per prompt; ties = 1/2.

    Args: oracle scores of each policy, [sample_index][prompt_index].
    """
    outcomes: dict[str, list[float]] = {}
    for ours, theirs in zip(challenger, baseline, strict=True):
        for row, a, b in zip(rows, ours, theirs, strict=True):
            outcomes.setdefault(row["family"], []).append(1.0 if a > b else 0.5 if a == b else 0.0)
    result = {family: _mean(values) for family, values in outcomes.items()}
    result["all"] = _mean([value for values in outcomes.values() for value in values])
    return result


def score_with_reward_model(reward_model, tokenizer, rows, samples: PolicySamples, batch_size):
    prompts = [row["prompt"] for row in rows]
    return [
        reward_model_scores(reward_model, tokenizer, prompts, texts, batch_size)
        for texts in samples.samples
    ]


def summarize(per_policy: dict[str, dict], wins: dict, rm_accuracy: dict, algorithm: str) -> dict:
    """The `eval` block of summary.json; `algorithm` names what trained "policy"."""
    keyed = {
        metric: {name: per_policy[name][metric] for name in per_policy}
        for metric in next(iter(per_policy.values()))
    }
    return {
        "algorithm": algorithm,
        "win_rate_policy_vs_sft": wins["all"],
        "win_rate_policy_vs_sft_by_family": {k: v for k, v in wins.items() if k != "all"},
        **keyed,
        "rm_accuracy": rm_accuracy,
        "kl_policy_vs_sft": per_policy["policy"]["kl_to_sft"],
        "kl_policy_vs_sft_per_token": per_policy["policy"]["kl_to_sft_per_token"],
    }


def markdown_table(summary: dict) -> str:
    metrics = ["oracle_score", "reward_score", "refusal_rate", "false_refusal_rate",
               "kl_to_sft", "mean_words"]  # fmt: skip
    name = summary["algorithm"].upper()
    lines = [f"| metric | base | sft | {name.lower()} |", "|---|---|---|---|"]
    for metric in metrics:
        cells = " | ".join(f"{summary[metric][name]:.3f}" for name in POLICIES)
        lines.append(f"| {metric} | {cells} |")
    by_family = ", ".join(
        f"{k} {v:.3f}" for k, v in summary["win_rate_policy_vs_sft_by_family"].items()
    )
    rm = ", ".join(f"{k} {v:.3f}" for k, v in summary["rm_accuracy"].items())
    lines += [
        "",
        f"**win-rate {name} vs SFT (oracle):** {summary['win_rate_policy_vs_sft']:.3f} ({by_family})",
        f"**reward-model held-out pair accuracy:** {rm}",
        f"**KL({name} ‖ SFT):** {summary['kl_policy_vs_sft']:.3f} nats/sequence, "
        f"{summary['kl_policy_vs_sft_per_token']:.4f} nats/token",
    ]
    return "\n".join(lines)
