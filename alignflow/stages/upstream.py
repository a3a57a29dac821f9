"""What a stage reads from the stages before it, whichever of them ran (alignflow.shape): the
policy's start and reference, the preference pairs, the reward models."""

from __future__ import annotations

from pathlib import Path

from alignflow import real
from alignflow.config import PipelineConfig
from alignflow.shape import collect_mode
from alignflow.stages import (
    BASE_MODEL_DIR,
    MODEL_DIR,
    OWN_PREFERENCES_FILE,
    PAIRS_FILE,
    member_dir,
)
from alignflow.store import StageResult, read_jsonl


def base_model_in(cfg: PipelineConfig, prepare_dir: Path) -> str:
    """The base policy given prepare's folder: the locally built tiny model or a dequantized GGUF
    (both written there), or the user's hub id / local path."""
    if cfg.model.source == "tiny" or cfg.model.gguf_file:
        return str(prepare_dir / BASE_MODEL_DIR)
    return real.resolve(str(cfg.model.name_or_path))


def base_model(cfg: PipelineConfig, prepare: StageResult) -> str:
    """The base policy of a completed prepare stage (`base_model_in`)."""
    return base_model_in(cfg, Path(prepare.output))


def start_model(cfg: PipelineConfig, prepare: StageResult, sft: StageResult | None) -> str:
    """Where the policy starts and what it is anchored to: the SFT model, or the base model as it
    ships when `sft.enabled` is false."""
    return str(sft.path(MODEL_DIR)) if sft is not None else base_model(cfg, prepare)


def reward_model_dirs(cfg: PipelineConfig, reward: StageResult | None) -> list[str]:
    """The reward models the policy and the evaluation read: the ensemble the reward stage trained,
    the one `reward_model.model` names, or none (rule rewards only)."""
    if reward is not None:
        members = int(reward.metrics.get("ensemble_size", 1))
        return [str(reward.path(member_dir(index))) for index in range(members)]
    return [cfg.reward_model.model] if cfg.reward_model.model else []


def preference_rows(
    cfg: PipelineConfig, prepare: StageResult, collect: StageResult | None
) -> list[dict]:
    """Every preference row this run trains on, each with `split` and `origin` ("user": your
    data.preferences, as the data layer wrote them; "collected": labelled by the collect stage).
    Pairs carry chosen/rejected; KTO-style rows from your data carry completion/label."""
    rows = []
    if collect_mode(cfg) in ("off", "both"):
        rows += read_jsonl(prepare.path(OWN_PREFERENCES_FILE))
    if collect is not None:
        rows += [{**pair, "origin": "collected"} for pair in read_jsonl(collect.path(PAIRS_FILE))]
    return rows


def origin_counts(rows: list[dict]) -> dict[str, int]:
    """Training rows per origin and split, for the stage's metrics."""
    counts: dict[str, int] = {}
    for row in rows:
        key = f"{row.get('origin', 'collected')}_{row['split']}_rows"
        counts[key] = counts.get(key, 0) + 1
    return counts
