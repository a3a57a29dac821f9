"""`*.save_minutes`: a checkpoint once enough training time has passed, whatever `save_steps`
says, and training resumes mid-epoch from it (a real transformers Trainer on a tiny model)."""

from __future__ import annotations

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from alignflow.models import last_checkpoint, periodic_checkpoints


class _Saves(TrainerCallback):
    """The steps a checkpoint was saved at, and how many steps this Trainer itself ran."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.ran = 0

    def on_save(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.ran += 1


def _trainer(out, minutes, max_steps: int) -> tuple[Trainer, _Saves]:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (24, 8))]
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=4, max_steps=max_steps,
        save_strategy="steps", save_steps=10**6, report_to="none", use_cpu=True, seed=0,
    )  # fmt: skip
    saves = _Saves()
    trainer = Trainer(
        model=LlamaForCausalLM(config),
        args=args,
        train_dataset=rows,
        callbacks=[periodic_checkpoints(minutes), saves],
    )
    return trainer, saves


def test_with_steps_only_a_short_run_saves_only_at_its_end(tmp_path):
    trainer, saves = _trainer(tmp_path, None, max_steps=4)
    trainer.train()
    assert saves.steps == [4]


def test_elapsed_minutes_save_mid_run_and_training_resumes_from_there(tmp_path):
    trainer, saves = _trainer(tmp_path, 1e-9, max_steps=3)  # every step counts as long enough
    trainer.train()
    assert saves.steps[:3] == [1, 2, 3]
    assert last_checkpoint(tmp_path).endswith("checkpoint-3")

    resumed, steps = _trainer(tmp_path, None, max_steps=6)  # a longer run picks up at step 3
    resumed.train(resume_from_checkpoint=last_checkpoint(tmp_path))
    assert resumed.state.global_step == 6
    assert steps.ran == 3  # mid-epoch: the 3 steps left, not the whole run again
