"""A stage whose model diverged or learned nothing fails with one line and commits nothing: an
SFT model with NaN weights, a reward model whose scores no longer tell answers apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignflow.health import DegenerateModel
from alignflow.pipeline import stage_dir, tracking_context
from alignflow.store import StageResult
from tasks.reward import run_reward
from tasks.sft import run_sft
from tests.conftest import micro_config


def _stage_result(pipeline_runs, stage: str) -> StageResult:
    output = Path(pipeline_runs.first["stages"][stage]["output"])
    return StageResult.model_validate_json((output / "result.json").read_text())


def _nothing_kept(cfg, stage: str) -> None:
    directory = stage_dir(cfg, stage)
    assert not directory.completed()
    assert not directory.final.exists() and not directory.partial.exists()


def test_sft_that_diverges_fails_and_keeps_nothing(pipeline_runs, tmp_path):
    cfg = micro_config(tmp_path, "sft.learning_rate=1.0e6", "sft.epochs=1")
    with pytest.raises(DegenerateModel, match=r"^sft: .*lower sft\.learning_rate$"):
        run_sft(cfg, tracking_context(cfg, tags={}), _stage_result(pipeline_runs, "prepare"))
    _nothing_kept(cfg, "sft")


def test_reward_model_that_learned_nothing_fails_and_keeps_nothing(pipeline_runs, tmp_path):
    cfg = micro_config(tmp_path, "reward_model.learning_rate=1.0e6", "reward_model.epochs=1")
    stages = {name: _stage_result(pipeline_runs, name) for name in ("prepare", "sft", "collect")}
    with pytest.raises(DegenerateModel, match=r"^reward: "):
        run_reward(
            cfg, tracking_context(cfg, tags={}), stages["prepare"], stages["sft"], stages["collect"]
        )
    _nothing_kept(cfg, "reward")
