"""SFT with LoRA learns and leaves a plain, merged model for the next stages."""

from __future__ import annotations

from pathlib import Path

import torch

from alignflow import tracking
from alignflow.models import load_causal_lm
from alignflow.stages import MODEL_DIR
from alignflow.store import StageResult
from tasks.sft import run_sft
from tests.conftest import micro_config


def test_lora_sft_loss_falls_and_saves_a_merged_model(pipeline_runs, tmp_path):
    cfg = micro_config(tmp_path, "sft.lora.r=8", "sft.lora.alpha=16", "sft.epochs=2")
    uri = tracking.default_tracking_uri(tmp_path)
    ctx = tracking.TrackingContext(
        tracking_uri=uri, experiment_id=tracking.open_experiment(uri, "lora-test", tmp_path)
    )
    prepared_dir = Path(pipeline_runs.first["stages"]["prepare"]["output"])
    prepared = StageResult.model_validate_json((prepared_dir / "result.json").read_text())

    result = run_sft(cfg, ctx, prepared)

    assert result.metrics["final_loss"] < result.metrics["first_loss"]
    saved = result.path(MODEL_DIR)
    assert not (saved / "adapter_config.json").exists()  # merged: later stages load it plainly
    model = load_causal_lm(str(saved))
    base = load_causal_lm(str(prepared_dir / "base_model"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(model.state_dict()[name], base.state_dict()[name])
