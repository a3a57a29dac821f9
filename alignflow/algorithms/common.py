"""What the algorithm modules share: TrainingArguments from a config section, running a TRL trainer
(resumable, tracked), saving the policy, and log-probs of given completions."""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

from torch import Tensor

from alignflow import distributed, progress, tracking
from alignflow.algorithms.saving import first_and_last, save_trained
from alignflow.config import OnlineRLConfig, PipelineConfig, PolicyTrainingConfig
from alignflow.models import (
    last_checkpoint,
    load_causal_lm,
    load_tokenizer,
    peft_lora_config,
    periodic_checkpoints,
    trainer_kwargs,
)
from alignflow.rl.rollout import completion_logprobs
from alignflow.stages import CURVES_CHART, POLICY_DIR

CHECKPOINTS = "checkpoints"


def load_sft(cfg: PipelineConfig, sft_dir: str, device: str | None = None):
    """The SFT model and its tokenizer: every algorithm's starting point. Returns (model, tokenizer)."""
    trust = cfg.model.trust_remote_code
    tokenizer = load_tokenizer(sft_dir, trust)
    return load_causal_lm(sft_dir, trust, device, tokenizer=tokenizer), tokenizer


@contextmanager
def whole_model_loading():
    """Load models whole inside this block, even after a DeepSpeed ZeRO-3 TrainingArguments exists:
    transformers keeps that config in a module global and partitions every model loaded while it
    lives, which suits the Trainer's model but not one we run ourselves (rewarder, evaluation)."""
    from transformers.integrations import deepspeed as hf_deepspeed

    active = hf_deepspeed._hf_deepspeed_config_weak_ref  # no public getter for the object itself
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = active


def training_args(cfg: PipelineConfig, section: PolicyTrainingConfig, work: Path) -> dict:
    """TrainingArguments for a TRL trainer from an epoch-based section."""
    return {
        **trainer_kwargs(section, work / CHECKPOINTS, cfg.run.seed),
        "trust_remote_code": cfg.model.trust_remote_code,
    }


def online_training_args(cfg: PipelineConfig, section: OnlineRLConfig, work: Path) -> dict:
    """TrainingArguments for RLOO/GRPO: `steps` updates rather than epochs over data, and no
    max_length (completions are capped by sampling.max_new_tokens)."""
    shared = SimpleNamespace(
        epochs=1.0,  # max_steps below takes precedence
        batch_size=completions_per_process(cfg.policy.algorithm, section),
        learning_rate=section.learning_rate,
        warmup_ratio=section.warmup_ratio,
        max_length=None,
        save_steps=section.save_steps,
    )
    args = trainer_kwargs(shared, work / CHECKPOINTS, cfg.run.seed)
    del args["max_length"]
    sampling = section.sampling
    return {
        **args,
        "max_steps": section.steps,
        "logging_steps": 1,  # one step is one batch of rollouts: the reward curve is the point
        "trust_remote_code": cfg.model.trust_remote_code,
        "num_generations": section.num_generations,
        "beta": section.beta,
        "max_completion_length": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
    }


def completions_per_process(algorithm: str, section: OnlineRLConfig) -> int:
    """How many of a step's `batch_size` completions each process samples and trains on.

    `batch_size` counts a step's completions over all processes (as PPO's rollout_batch_size
    does), so a run learns the same on any number of them; TRL wants whole groups of
    `num_generations` in that global batch, which the config already checks.
    """
    processes = distributed.world_size()
    if section.batch_size % processes:
        step = math.lcm(section.num_generations, processes)
        raise ValueError(
            f"policy.{algorithm}.batch_size ({section.batch_size}) counts completions per step over "
            f"all {processes} processes and must divide by {processes}: set it to a multiple of "
            f"{step} (of both policy.{algorithm}.num_generations, {section.num_generations}, and "
            f"the process count), e.g. {step * max(1, round(section.batch_size / step))}"
        )
    return section.batch_size // processes


def lora(section, model) -> object | None:
    return peft_lora_config(section.lora, "CAUSAL_LM", model)


def train_tracked(
    trainer, checkpoints: Path, save_minutes: float | None, name: str, curves: str = CURVES_CHART
):
    """Run a transformers Trainer as every training stage does: resuming from the last
    checkpoint in `checkpoints` (a crash left it; one is saved at least every `save_minutes`),
    logging every logged step to the active MLflow run, showing progress as `name`
    (alignflow.progress), then its curves as the `curves` PNG, in MLflow and beside `checkpoints`
    (the stage's folder). Returns the Trainer's output."""
    trainer.add_callback(tracking.trainer_callback())
    trainer.add_callback(periodic_checkpoints(save_minutes))
    progress.watch(trainer, name)
    output = trainer.train(resume_from_checkpoint=last_checkpoint(checkpoints))
    tracking.log_trainer_curves(trainer, name, curves, save_to=checkpoints.parent / curves)
    return output


def fit(trainer, work: Path, save_minutes: float | None, name: str) -> dict[str, float]:
    """`train_tracked` with checkpoints in `work`; returns the mean training loss, and the first
    and last logged ones."""
    output = train_tracked(trainer, work / CHECKPOINTS, save_minutes, name)
    return {"train_loss": output.training_loss, **first_and_last(trainer.state.log_history, "loss")}


def save_policy(trainer, tokenizer, work: Path, setting: str = "the learning rate") -> Path:
    """Save the trained policy (LoRA merged, so later stages load a plain model) and its tokenizer
    from rank 0, then drop the checkpoints. Every rank calls it, after training; none returns
    before the policy is on disk. Returns the policy's directory."""
    out = work / POLICY_DIR
    merge = hasattr(trainer.model, "merge_and_unload")
    save_trained(trainer, tokenizer, out, merge_lora=merge, setting=setting)
    distributed.barrier()  # rank 0 has saved, and no rank still writes a checkpoint file
    if distributed.is_main():
        shutil.rmtree(work / CHECKPOINTS, ignore_errors=True)
    return out


def preference_margins(model, tokenizer, pairs: Sequence[dict]) -> Tensor:
    """log π(chosen) − log π(rejected) for each pair (one-message chosen/rejected). Returns (n,)."""
    prompts = [pair["prompt"] for pair in pairs]
    chosen = completion_logprobs(
        model, tokenizer, prompts, [p["chosen"][-1]["content"] for p in pairs]
    )
    rejected = completion_logprobs(
        model, tokenizer, prompts, [p["rejected"][-1]["content"] for p in pairs]
    )
    return chosen - rejected
