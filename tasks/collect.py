"""Stage 3: K sampled responses per prompt from the SFT policy, labelled, expanded into pairs."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow import pipeline, tracking
from alignflow.config import PipelineConfig
from alignflow.data.preferences import ranking_to_pairs, unique_candidates
from alignflow.judges import oracle_scores
from alignflow.store import StageResult, read_jsonl, write_jsonl
from alignflow.tracking import TrackingContext
from tasks.sft import MODEL_DIR

COMPARISONS_FILE = "comparisons.jsonl"
PAIRS_FILE = "pairs.jsonl"


def label_comparisons(prompts: list[dict], candidates: list[list[str]]) -> list[dict]:
    """One comparison per prompt: its distinct candidates and the oracle's score for each."""
    comparisons = []
    for row, texts in zip(prompts, candidates, strict=True):
        distinct = unique_candidates(texts)
        comparisons.append(
            {
                **row,
                "candidates": distinct,
                "scores": oracle_scores([row] * len(distinct), distinct),
                "labeler": "oracle",
            }  # fmt: skip
        )
    return comparisons


def comparisons_to_pairs(
    comparisons: list[dict], eval_fraction: float, seed: int
) -> tuple[list[dict], Counter]:
    """Expand rankings into preference rows, splitting train/eval by prompt (never by pair)."""
    rng = random.Random(seed)
    rows, counts = [], Counter()
    for comparison in comparisons:
        split = "eval" if rng.random() < eval_fraction else "train"
        pairs, ties = ranking_to_pairs(comparison["scores"])
        counts["ties_skipped"] += ties
        counts["single_candidate"] += len(comparison["candidates"]) == 1
        for chosen, rejected in pairs:
            rows.append(
                {
                    "prompt": comparison["prompt"],
                    "chosen": [{"role": "assistant", "content": comparison["candidates"][chosen]}],
                    "rejected": [
                        {"role": "assistant", "content": comparison["candidates"][rejected]}
                    ],
                    "family": comparison["family"],
                    "split": split,
                }
            )
            counts[f"pairs_{split}"] += 1
    return rows, counts


def run_collect(
    cfg: PipelineConfig, ctx: TrackingContext, prepared: StageResult, sft: StageResult
) -> StageResult:
    def body(work: Path) -> dict:
        import torch

        from alignflow.models import default_device, load_causal_lm, load_tokenizer
        from alignflow.rl.rollout import sample_texts

        k = cfg.collect.samples_per_prompt
        policy_dir = str(sft.path(MODEL_DIR))
        tokenizer = load_tokenizer(policy_dir, cfg.model.trust_remote_code)
        policy = load_causal_lm(policy_dir, cfg.model.trust_remote_code, default_device()).eval()
        prompts = read_jsonl(prepared.path("preference_prompts.jsonl"))
        repeated = [row["prompt"] for row in prompts for _ in range(k)]
        torch.manual_seed(cfg.run.seed)
        texts = sample_texts(
            policy, tokenizer, repeated, cfg.collect.sampling, cfg.collect.batch_size,
            desc="collect: sampling",
        )  # fmt: skip
        candidates = [texts[i * k : (i + 1) * k] for i in range(len(prompts))]
        comparisons = label_comparisons(prompts, candidates)
        pairs, counts = comparisons_to_pairs(comparisons, cfg.reward.eval_fraction, cfg.run.seed)
        if not pairs:
            raise ValueError("collect: every candidate tied, so there are no preference pairs")
        write_jsonl(work / COMPARISONS_FILE, comparisons)
        write_jsonl(work / PAIRS_FILE, pairs)
        metrics = {"prompts": len(prompts), "responses": len(texts), **counts}
        for family in ("review", "unsafe"):
            scores = [s for c in comparisons if c["family"] == family for s in c["scores"]]
            if scores:
                metrics[f"sft_oracle_score_{family}"] = sum(scores) / len(scores)
        tracking.log_metrics(metrics)
        return metrics

    return pipeline.run_stage(cfg, ctx, "collect", body)


@task(name="collect", cache_policy=NO_CACHE)
def collect_task(
    cfg: PipelineConfig, ctx: TrackingContext, prepared: StageResult, sft: StageResult
) -> StageResult:
    return run_collect(cfg, ctx, prepared, sft)


if __name__ == "__main__":
    from tasks._standalone import main

    raise SystemExit(main("collect", run_collect))
