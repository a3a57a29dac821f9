"""Stage 2: supervised fine-tuning with TRL's SFTTrainer, loss on assistant tokens only (the chat
template's generation markers give the mask)."""

from __future__ import annotations

import shutil
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow import pipeline, tracking
from alignflow.algorithms.saving import save_trained  # also tasks.reward's
from alignflow.config import PipelineConfig
from alignflow.store import StageResult, read_jsonl
from alignflow.tracking import TrackingContext
from tasks._compute import run_stage_where_configured
from tasks._inputs import MODEL_DIR, base_model

__all__ = ["MODEL_DIR", "loss_trend", "run_sft", "save_trained", "sft_task"]


def loss_trend(log_history: list[dict], key: str = "loss") -> dict[str, float]:
    """First and last logged training loss: the evidence that something was learned."""
    losses = [entry[key] for entry in log_history if key in entry]
    return {"first_loss": losses[0], "final_loss": losses[-1]} if losses else {}


def run_sft(cfg: PipelineConfig, ctx: TrackingContext, prepared: StageResult) -> StageResult:
    def body(work: Path) -> dict:
        from trl import SFTConfig, SFTTrainer

        from alignflow.models import (
            last_checkpoint,
            load_causal_lm,
            load_tokenizer,
            peft_lora_config,
            periodic_checkpoints,
            tokenize_conversations,
            trainer_kwargs,
        )

        source, trust = base_model(cfg, prepared), cfg.model.trust_remote_code
        tokenizer = load_tokenizer(source, trust, chat_template=cfg.model.chat_template)
        model = load_causal_lm(source, trust, tokenizer=tokenizer)
        (dataset, untrained), (held_out, _) = (
            tokenize_conversations(tokenizer, read_jsonl(path))
            for path in (prepared.path("sft.jsonl"), prepared.path("sft_eval.jsonl"))
        )
        checkpoints = work / "checkpoints"
        args = SFTConfig(
            **trainer_kwargs(cfg.sft, checkpoints, cfg.run.seed)
        )  # masks: tokenize_conversations
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            eval_dataset=held_out if len(held_out) else None,
            processing_class=tokenizer,
            peft_config=peft_lora_config(cfg.sft.lora, "CAUSAL_LM", model),
            callbacks=[tracking.trainer_callback(), periodic_checkpoints(cfg.sft.save_minutes)],
        )
        trainer.train(resume_from_checkpoint=last_checkpoint(checkpoints))
        save_trained(
            trainer, tokenizer, work / MODEL_DIR, cfg.sft.lora is not None, "sft.learning_rate"
        )
        shutil.rmtree(checkpoints, ignore_errors=True)
        metrics = {
            "train_rows": len(trainer.train_dataset),
            # Rows TRL drops after truncating to sft.max_length (no trained token left) and rows
            # with no trained token at all: counted, never silent.
            "rows_dropped_by_truncation": len(dataset) - len(trainer.train_dataset),
            "rows_without_trained_tokens": untrained,
            **loss_trend(trainer.state.log_history),
        }
        if len(held_out):  # data.eval_fraction > 0: the loss on SFT rows never trained on
            metrics |= {"eval_rows": len(held_out), "eval_loss": trainer.evaluate()["eval_loss"]}
        return metrics

    return pipeline.run_stage(cfg, ctx, "sft", body)


@task(name="sft", cache_policy=NO_CACHE)
def sft_task(cfg: PipelineConfig, ctx: TrackingContext, prepared: StageResult) -> StageResult:
    return run_stage_where_configured(cfg, ctx, "sft", run_sft, prepared)


if __name__ == "__main__":
    from tasks._standalone import main

    raise SystemExit(main("sft", run_sft))
