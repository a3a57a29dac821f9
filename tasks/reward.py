"""Stage 4: a reward model trained with TRL's RewardTrainer, with held-out pair accuracy."""

from __future__ import annotations

import shutil
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow import pipeline, tracking
from alignflow.config import PipelineConfig
from alignflow.store import StageResult, read_jsonl
from alignflow.tracking import TrackingContext
from tasks.collect import PAIRS_FILE
from tasks.sft import MODEL_DIR, loss_trend


def pair_accuracy(model, tokenizer, pairs: list[dict]) -> dict[str, float]:
    """Fraction of pairs where the chosen response outscores the rejected one, per family."""
    from alignflow.judges import reward_model_scores

    prompts = [pair["prompt"] for pair in pairs]
    chosen = reward_model_scores(
        model, tokenizer, prompts, [p["chosen"][0]["content"] for p in pairs]
    )
    rejected = reward_model_scores(
        model, tokenizer, prompts, [p["rejected"][0]["content"] for p in pairs]
    )
    correct: dict[str, list[bool]] = {}
    for pair, good, bad in zip(pairs, chosen, rejected, strict=True):
        correct.setdefault(pair["family"], []).append(good > bad)
    accuracy = {family: sum(hits) / len(hits) for family, hits in correct.items()}
    accuracy["all"] = sum(sum(h) for h in correct.values()) / sum(len(h) for h in correct.values())
    return accuracy


def run_reward(
    cfg: PipelineConfig, ctx: TrackingContext, sft: StageResult, collected: StageResult
) -> StageResult:
    def body(work: Path) -> dict:
        from datasets import Dataset
        from trl import RewardConfig, RewardTrainer

        from alignflow.models import (
            last_checkpoint,
            load_scalar_head_model,
            load_tokenizer,
            trainer_kwargs,
        )

        source, trust = str(sft.path(MODEL_DIR)), cfg.model.trust_remote_code
        tokenizer = load_tokenizer(source, trust)
        # From the SFT checkpoint: a fresh one-output head on the policy's own features.
        model = load_scalar_head_model(source, trust, pad_token_id=tokenizer.pad_token_id)
        pairs = read_jsonl(collected.path(PAIRS_FILE))
        columns = ("prompt", "chosen", "rejected")
        train = [{k: p[k] for k in columns} for p in pairs if p["split"] == "train"]
        heldout = [p for p in pairs if p["split"] == "eval"]
        checkpoints = work / "checkpoints"
        args = RewardConfig(**trainer_kwargs(cfg.reward, checkpoints, cfg.run.seed))
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(train),
            processing_class=tokenizer,
            callbacks=[tracking.trainer_callback()],
        )
        # RewardTrainer drops pairs longer than max_length without a word: count them.
        dropped = len(train) - len(trainer.train_dataset)
        trainer.train(resume_from_checkpoint=last_checkpoint(checkpoints))
        trainer.model.save_pretrained(work / MODEL_DIR)
        tokenizer.save_pretrained(work / MODEL_DIR)
        shutil.rmtree(checkpoints, ignore_errors=True)
        accuracy = pair_accuracy(trainer.model.eval(), tokenizer, heldout)
        metrics = {
            "train_pairs": len(train),
            "eval_pairs": len(heldout),
            "dropped_too_long": dropped,
            **loss_trend(trainer.state.log_history),
            **{f"accuracy_{family}": value for family, value in accuracy.items()},
        }
        tracking.log_metrics(metrics)
        return metrics

    return pipeline.run_stage(cfg, ctx, "reward", body)


@task(name="reward", cache_policy=NO_CACHE)
def reward_task(
    cfg: PipelineConfig, ctx: TrackingContext, sft: StageResult, collected: StageResult
) -> StageResult:
    return run_reward(cfg, ctx, sft, collected)


if __name__ == "__main__":
    from tasks._standalone import main

    raise SystemExit(main("reward", run_reward))
