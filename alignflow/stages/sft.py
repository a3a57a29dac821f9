"""Stage 2: supervised fine-tuning with TRL's SFTTrainer, loss on assistant tokens only (the chat
template's generation markers give the mask)."""

from __future__ import annotations

import shutil
from pathlib import Path

from alignflow.algorithms.saving import first_and_last, save_trained
from alignflow.config import PipelineConfig
from alignflow.stages import MODEL_DIR, SFT_EVAL_FILE, dataset_file
from alignflow.stages.upstream import base_model
from alignflow.store import StageResult, read_jsonl


def run(cfg: PipelineConfig, work: Path, prepare: StageResult) -> dict:
    """Fine-tune the base model on prepare's SFT rows into `work / MODEL_DIR`; returns metrics."""
    from trl import SFTConfig, SFTTrainer

    from alignflow.algorithms.common import train_tracked
    from alignflow.models import (
        load_causal_lm,
        load_tokenizer,
        peft_lora_config,
        tokenize_conversations,
        trainer_kwargs,
    )

    source, trust = base_model(cfg, prepare), cfg.model.trust_remote_code
    tokenizer = load_tokenizer(source, trust, chat_template=cfg.model.chat_template)
    model = load_causal_lm(source, trust, tokenizer=tokenizer)
    (dataset, untrained), (held_out, _) = (
        tokenize_conversations(tokenizer, read_jsonl(path))
        for path in (prepare.path(dataset_file("sft")), prepare.path(SFT_EVAL_FILE))
    )
    checkpoints = work / "checkpoints"
    args = SFTConfig(**trainer_kwargs(cfg.sft, checkpoints, cfg.run.seed))  # masks: tokenize_…
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=held_out if len(held_out) else None,
        processing_class=tokenizer,
        peft_config=peft_lora_config(cfg.sft.lora, "CAUSAL_LM", model),
    )
    train_tracked(trainer, checkpoints, cfg.sft.save_minutes, "sft")
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
        **first_and_last(trainer.state.log_history, "loss"),
    }
    if len(held_out):  # data.eval_fraction > 0: the loss on SFT rows never trained on
        metrics |= {"eval_rows": len(held_out), "eval_loss": trainer.evaluate()["eval_loss"]}
    return metrics
