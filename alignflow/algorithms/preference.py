"""Offline preference optimisation on the collect stage's pairs: DPO and KTO (TRL), ORPO (TRL
experimental). Each trains on the `train` pairs and reports, on the held-out `eval` pairs, how much
more the policy prefers the chosen response than the SFT model does."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from alignflow import distributed
from alignflow.algorithms import PolicyInputs
from alignflow.algorithms.common import (
    fit,
    load_sft,
    lora,
    preference_margins,
    save_policy,
    training_args,
    whole_model_loading,
)
from alignflow.config import PipelineConfig

PAIR_COLUMNS = ("prompt", "chosen", "rejected")


def pair_rows(pairs: list[dict], split: str) -> list[dict]:
    """The pairs of one split, with only the columns the trainers read."""
    return [{k: pair[k] for k in PAIR_COLUMNS} for pair in pairs if pair["split"] == split]


def unpaired_rows(pairs: list[dict]) -> list[dict]:
    """KTO rows `{prompt, completion, label}` from pairs: chosen is desirable, rejected is not.

    A ranking of K candidates yields up to K(K-1)/2 pairs, so one completion can be chosen in some
    pairs and rejected in others; each distinct (prompt, completion) appears once, labelled by its
    net wins, and completions that win as often as they lose are left out. A served response that
    its user rated (`served_rating` "up" or "down", from `alignflow serve`'s /v1/feedback) is
    labelled by that rating instead: a person's verdict on that very completion, where the pairs
    only say how it compared with fresh samples. The same response served and rated more than once
    takes its majority rating (each exchange counted once); an even split leaves it to the pairs.
    """
    net_wins: dict[tuple[str, str], int] = defaultdict(int)
    ratings: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)  # key -> served_id -> ±1
    originals: dict[tuple[str, str], tuple[list, list]] = {}
    for pair in pairs:
        for side, sign in (("chosen", 1), ("rejected", -1)):
            key = (repr(pair["prompt"]), pair[side][-1]["content"])
            net_wins[key] += sign
            originals.setdefault(key, (pair["prompt"], pair[side]))
        if pair.get("served_rating") in ("up", "down") and pair.get("served_response"):
            key = (repr(pair["prompt"]), pair["served_response"])
            vote = 1 if pair["served_rating"] == "up" else -1
            ratings[key][str(pair.get("served_id"))] = vote  # one exchange, many pairs: one vote
            completion = [{"role": "assistant", "content": pair["served_response"]}]
            originals.setdefault(key, (pair["prompt"], completion))
    tallies = {key: sum(votes.values()) for key, votes in ratings.items()}
    rated = {key: tally > 0 for key, tally in tallies.items() if tally != 0}
    labels = {key: wins > 0 for key, wins in net_wins.items() if wins != 0} | rated
    return [
        {"prompt": originals[key][0], "completion": originals[key][1], "label": label,
         "rated": key in rated}
        for key, label in labels.items()
    ]  # fmt: skip


def margin_metrics(cfg: PipelineConfig, policy_dir: Path, inputs: PolicyInputs) -> dict[str, float]:
    """Held-out preference margins (log π(chosen) − log π(rejected)) of the saved policy and of the
    SFT model, and the fraction of pairs each ranks the right way round. Computed by rank 0 alone
    (other ranks get {}: the stage reports rank 0's metrics), from the policy as saved."""
    heldout = pair_rows(inputs.pairs, "eval")
    if not heldout or not distributed.is_main():
        return {}
    metrics = {}
    for name, path in (("policy", str(policy_dir)), ("sft", inputs.sft_dir)):
        with whole_model_loading():  # after a ZeRO-3 trainer
            model, tokenizer = load_sft(cfg, path, str(distributed.device()))
        margins = preference_margins(model, tokenizer, heldout)
        metrics[f"eval_margin_{name}"] = margins.mean().item()
        metrics[f"eval_accuracy_{name}"] = (margins > 0).float().mean().item()
    return metrics


def _fit_and_save(
    cfg: PipelineConfig, trainer, tokenizer, inputs: PolicyInputs, work: Path, rows: int
):
    section = getattr(cfg.policy, cfg.policy.algorithm)
    losses = fit(trainer, work, section.save_minutes, cfg.policy.algorithm)
    policy_dir = save_policy(
        trainer, tokenizer, work, f"policy.{cfg.policy.algorithm}.learning_rate"
    )
    return {
        "train_rows": len(trainer.train_dataset),
        # TRL drops rows whose prompt alone fills max_length: counted, never silent.
        "rows_dropped_too_long": rows - len(trainer.train_dataset),
        **losses,
        **margin_metrics(cfg, policy_dir, inputs),
    }


def train_dpo(cfg: PipelineConfig, inputs: PolicyInputs, work: Path) -> dict[str, float]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    section = cfg.policy.dpo
    model, tokenizer = load_sft(cfg, inputs.sft_dir)
    args = DPOConfig(
        **training_args(cfg, section, work),
        beta=section.beta,
        loss_type=[section.loss_type],
        label_smoothing=section.label_smoothing,
    )
    rows = pair_rows(inputs.pairs, "train")
    # No ref_model: TRL loads a frozen copy of the SFT model (or, with LoRA, disables the adapter).
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora(section, model),
    )
    return _fit_and_save(cfg, trainer, tokenizer, inputs, work, len(rows))


def train_kto(cfg: PipelineConfig, inputs: PolicyInputs, work: Path) -> dict[str, float]:
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    section = cfg.policy.kto
    model, tokenizer = load_sft(cfg, inputs.sft_dir)
    rows = unpaired_rows([pair for pair in inputs.pairs if pair["split"] == "train"])
    # Your own KTO-style rows (data.preferences) as they came: already labelled.
    rows += [{**row, "rated": False} for row in inputs.unpaired if row["split"] == "train"]
    args = KTOConfig(
        **training_args(cfg, section, work),
        beta=section.beta,
        loss_type=section.loss_type,
        desirable_weight=section.desirable_weight,
        undesirable_weight=section.undesirable_weight,
    )
    columns = ("prompt", "completion", "label")
    trainer = KTOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([{k: row[k] for k in columns} for row in rows]),
        processing_class=tokenizer,
        peft_config=lora(section, model),
    )
    desirable = sum(row["label"] for row in rows)
    metrics = _fit_and_save(cfg, trainer, tokenizer, inputs, work, len(rows))
    return {
        **metrics,
        "desirable_rows": desirable,
        "undesirable_rows": len(rows) - desirable,
        "rated_rows": sum(row["rated"] for row in rows),  # labelled by a served rating
    }


def train_orpo(cfg: PipelineConfig, inputs: PolicyInputs, work: Path) -> dict[str, float]:
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    section = cfg.policy.orpo
    model, tokenizer = load_sft(cfg, inputs.sft_dir)
    args = ORPOConfig(**training_args(cfg, section, work), beta=section.beta)
    rows = pair_rows(inputs.pairs, "train")
    trainer = ORPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora(section, model),
    )
    return _fit_and_save(cfg, trainer, tokenizer, inputs, work, len(rows))
