"""Stage 1: write the canonical datasets and, for `model.source: tiny`, build the base model."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow import demo, pipeline, tracking
from alignflow.config import PipelineConfig
from alignflow.store import StageResult, write_jsonl
from alignflow.tracking import TrackingContext

BASE_MODEL_DIR = "base_model"


def base_model(cfg: PipelineConfig, prepared: StageResult) -> str:
    """The base policy: the locally built tiny model, or the user's hub id / local path."""
    if cfg.model.source == "tiny":
        return str(prepared.path(BASE_MODEL_DIR))
    return str(cfg.model.name_or_path)


def _write_demo_data(cfg: PipelineConfig, work: Path) -> dict[str, int]:
    task_cfg = cfg.data.demo
    seed, held = task_cfg.seed, task_cfg.heldout_product_fraction
    files = {
        "sft.jsonl": list(
            demo.sft_rows(seed, task_cfg.sft_examples, task_cfg.unsafe_fraction, held)
        ),
        "preference_prompts.jsonl": list(
            demo.prompt_rows(seed, task_cfg.preference_prompts, task_cfg.unsafe_fraction, held, 1)
        ),
        "rl_prompts.jsonl": list(
            demo.prompt_rows(seed, task_cfg.rl_prompts, task_cfg.unsafe_fraction, held, 2)
        ),
        "heldout.jsonl": [
            demo.prompt_row(prompt)
            for prompt in demo.heldout_prompts(
                seed, task_cfg.heldout_review_prompts, task_cfg.heldout_unsafe_prompts, held
            )
        ],
    }
    for name, rows in files.items():
        write_jsonl(work / name, rows)
    return {f"rows_{name.split('.')[0]}": len(rows) for name, rows in files.items()}


def _build_tiny(cfg: PipelineConfig, work: Path) -> dict[str, int]:
    from alignflow.models import build_tiny_model, train_tokenizer

    texts = demo.corpus(cfg.data.demo.seed, cfg.data.demo.heldout_product_fraction)
    tokenizer = train_tokenizer(texts, cfg.model.tiny.vocab_size)
    model = build_tiny_model(cfg.model.tiny, tokenizer, cfg.run.seed)
    model.save_pretrained(work / BASE_MODEL_DIR)
    tokenizer.save_pretrained(work / BASE_MODEL_DIR)
    return {"vocab_size": len(tokenizer), "parameters": model.num_parameters()}


def run_prepare(cfg: PipelineConfig, ctx: TrackingContext) -> StageResult:
    def body(work: Path) -> dict:
        from alignflow.models import check_base_model

        check_base_model(cfg.model)
        metrics = _write_demo_data(cfg, work)
        if cfg.model.source == "tiny":
            metrics.update(_build_tiny(cfg, work))
        tracking.log_metrics(metrics)
        return metrics

    return pipeline.run_stage(cfg, ctx, "prepare", body)


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(cfg: PipelineConfig, ctx: TrackingContext) -> StageResult:
    return run_prepare(cfg, ctx)


if __name__ == "__main__":
    from tasks._standalone import main

    raise SystemExit(main("prepare", run_prepare))
