"""Saving a TRL Trainer's model under any launch (one process, N DDP ranks, DeepSpeed): gathered,
written once by rank 0 as plain safetensors, and what its log says was learned. Shared by the SFT
and reward stages and every policy algorithm; light to import (no torch until called)."""

from __future__ import annotations

from pathlib import Path


def save_trained(
    trainer, tokenizer, out: Path, merge_lora: bool = False, setting: str = "the learning rate"
) -> None:
    """Save `trainer`'s model and `tokenizer` to `out` from rank 0; every rank must call this.
    A model that diverged (a non-finite loss or weight) raises DegenerateModel naming `setting`,
    the learning rate to lower, and is not kept.

    `save_model` gathers ZeRO-3 shards first (a collective), where `save_pretrained` on a
    partitioned model would write empty tensors. With `merge_lora` the adapter is merged so later
    stages load a plain model: ZeRO-3 weights are gathered on every rank for the merge.
    """
    if merge_lora:
        with _gathered(trainer):
            if trainer.is_world_process_zero():
                trainer.model.merge_and_unload().save_pretrained(out)
    else:
        trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(out)
        (out / "training_args.bin").unlink(missing_ok=True)  # a pickle: safetensors only here
        from alignflow.health import check_finite_losses, check_finite_weights

        what = setting.partition(".")[0] if "." in setting else "model"
        check_finite_losses(trainer.state.log_history, what, setting)
        check_finite_weights(out, what, setting)


def first_and_last(log_history: list[dict], key: str) -> dict[str, float]:
    """`first_<key>` and `final_<key>` of a Trainer's log: the evidence that something was learned
    (e.g. the training loss fell)."""
    values = [entry[key] for entry in log_history if key in entry]
    return {f"first_{key}": values[0], f"final_{key}": values[-1]} if values else {}


def _gathered(trainer):
    """A context in which every weight of `trainer.model` is whole: ZeRO-3 gathers the partitions
    (read-only: any change is dropped on exit); otherwise weights are whole already."""
    from contextlib import nullcontext

    from transformers.integrations import is_deepspeed_zero3_enabled

    if not (trainer.is_deepspeed_enabled and is_deepspeed_zero3_enabled()):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(trainer.model.parameters()), modifier_rank=None)
