"""`compute.<stage>`: how a stage runs (processes, launcher, DeepSpeed), checked when the config loads
and kept out of every cache key."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignflow.config import ConfigError, load_config
from alignflow.pipeline import stage_keys

MICRO = Path(__file__).resolve().parents[2] / "configs" / "micro.yaml"


def test_compute_settings_load_per_stage():
    cfg = load_config(MICRO, ["compute={sft: {nproc: 2}, policy: {deepspeed: x.json}}"])
    assert cfg.compute["sft"].nproc == 2 and cfg.compute["sft"].launcher == "torchrun"
    assert cfg.compute["sft"].launched and cfg.compute["policy"].launched
    assert not load_config(MICRO, ["compute={sft: {nproc: 1}}"]).compute["sft"].launched


def test_only_stages_that_split_their_work_can_be_launched():
    with pytest.raises(
        ConfigError, match="compute.collect: only sft, reward, policy run on several"
    ):
        load_config(MICRO, ["compute={collect: {nproc: 2}}"])
    with pytest.raises(ConfigError, match="compute.sft.nproc"):
        load_config(MICRO, ["compute={sft: {nproc: 0}}"])


def test_how_a_stage_runs_is_not_part_of_its_cache_key():
    plain = stage_keys(load_config(MICRO, []))
    launched = stage_keys(load_config(MICRO, ["compute={sft: {nproc: 2, deepspeed: z.json}}"]))
    assert plain == launched
