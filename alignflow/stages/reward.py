"""Stage 4: reward models trained with TRL's RewardTrainer, with held-out pair accuracy."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from alignflow import distributed, tracking
from alignflow.algorithms.saving import first_and_last, save_trained
from alignflow.config import PipelineConfig
from alignflow.health import check_reward_model
from alignflow.shape import require
from alignflow.stages import (
    CURVES_CHART,
    MEMBER_METRICS,
    MODEL_DIR,
    OWN_PREFERENCES_FILE,
    PAIRS_FILE,
    member_dir,
)
from alignflow.stages.upstream import origin_counts, preference_rows, start_model
from alignflow.store import StageResult, write_json_atomic


def pair_accuracy(model, tokenizer, pairs: list[dict]) -> dict[str, float]:
    """Fraction of pairs where the chosen response outscores the rejected one: `accuracy` over
    all pairs and, for pairs that carry a `family`, `accuracy_<family>` per family; nothing
    without held-out pairs (the evaluation then says n/a)."""
    from alignflow.evaluation import mean_by_family
    from alignflow.judges import reward_model_scores

    if not pairs:
        return {}

    def scores(side: str) -> list[float]:  # a multi-message reply: its last message, in context
        contexts = [[*pair["prompt"], *pair[side][:-1]] for pair in pairs]
        replies = [pair[side][-1]["content"] for pair in pairs]
        return reward_model_scores(model, tokenizer, contexts, replies)

    chosen, rejected = scores("chosen"), scores("rejected")
    hits = [float(good > bad) for good, bad in zip(chosen, rejected, strict=True)]
    overall, by_family = mean_by_family(pairs, hits)
    spread = statistics.pstdev(chosen + rejected)  # ~0: the model says the same of every answer
    return {
        "accuracy": overall,
        **{f"accuracy_{f}": value for f, value in by_family.items()},
        "score_std": spread,
    }


def preference_ids(tokenizer, pairs: list[dict]) -> list[dict]:
    """Pairs as `chosen_ids`/`rejected_ids` in the layout the evaluation and PPO score
    (`alignflow.judges.reward_model_scores`): the prompt with its generation prompt, then the
    reply's tokens through its end-of-turn token, nothing after (not the newline Qwen3 writes after
    `<|im_end|>`). Right-padded with a pad that is not the EOS (`models.check_padding`), the
    model's last non-pad token is that EOS: training reads the score where PPO and the evaluation
    do. A multi-message reply is scored at its last message, the others being context."""
    from alignflow.rl.rollout import completion_ids, prompt_ids

    def encoded(prompt: list[dict], reply: list[dict]) -> list[int]:
        context = [*prompt, *reply[:-1]]
        return prompt_ids(tokenizer, context) + completion_ids(
            tokenizer, context, reply[-1]["content"]
        )

    return [
        {
            "chosen_ids": encoded(pair["prompt"], pair["chosen"]),
            "rejected_ids": encoded(pair["prompt"], pair["rejected"]),
        }
        for pair in pairs
    ]


def train_member(
    cfg: PipelineConfig, sft_dir: str, train: list[dict], heldout: list[dict], seed: int, out: Path
) -> dict:
    """Train one reward model from the SFT checkpoint into `out`; returns its metrics."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    from alignflow.algorithms.common import train_tracked
    from alignflow.models import (
        check_padding,
        load_scalar_head_model,
        load_tokenizer,
        peft_lora_config,
        trainer_kwargs,
    )

    trust = cfg.model.trust_remote_code
    tokenizer = load_tokenizer(sft_dir, trust)
    check_padding(tokenizer, "reward")
    # From the SFT checkpoint: a fresh one-output head on the policy's own features, drawn from
    # `seed` (the Trainer seeds only after the model exists, so without this the head depended on
    # whatever the process had drawn before, e.g. in a retraining round).
    set_seed(seed)
    model = load_scalar_head_model(sft_dir, trust, pad_token_id=tokenizer.pad_token_id)
    checkpoints = out.parent / f"checkpoints-{out.name}"
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(**trainer_kwargs(cfg.reward_model, checkpoints, seed)),
        train_dataset=Dataset.from_list(preference_ids(tokenizer, train)),
        processing_class=tokenizer,
        # peft's SEQ_CLS task trains the score head beside the adapter
        peft_config=peft_lora_config(cfg.reward_model.lora, "SEQ_CLS", model),
    )
    # RewardTrainer drops pairs longer than max_length without a word: count them.
    dropped = len(train) - len(trainer.train_dataset)
    first = out.name == MODEL_DIR
    train_tracked(
        trainer, checkpoints, cfg.reward_model.save_minutes,
        "reward" if first else f"reward {out.name}",
        CURVES_CHART if first else f"{out.name}-{CURVES_CHART}",
    )  # fmt: skip
    metrics = {
        "dropped_too_long": dropped,
        **first_and_last(trainer.state.log_history, "loss"),
        **pair_accuracy(trainer.model.eval(), tokenizer, heldout),
    }
    save_trained(
        trainer, tokenizer, out, cfg.reward_model.lora is not None, "reward_model.learning_rate"
    )
    if trainer.is_world_process_zero():
        write_json_atomic(out / MEMBER_METRICS, metrics)  # last: marks the member complete
        shutil.rmtree(checkpoints, ignore_errors=True)
    return metrics


def _log_provenance(prepare: StageResult, collect: StageResult | None, rows: list) -> None:
    """The preference data this model learned from, as an MLflow dataset input: under collect's
    digest for collected pairs, under prepare's key for your own."""
    if collect is not None:
        digest = collect.metrics.get("preference_digest") or collect.cache_key
        source = str(collect.path(PAIRS_FILE))
    else:
        digest, source = prepare.cache_key, str(prepare.path(OWN_PREFERENCES_FILE))
    tracking.log_dataset_input(rows, "preferences", source, str(digest))


def run(
    cfg: PipelineConfig,
    work: Path,
    prepare: StageResult,
    sft: StageResult | None,
    collect: StageResult | None,
) -> dict:
    """Train `reward_model.ensemble_size` reward models on this run's preference pairs into `work`
    (member 0 in MODEL_DIR), each checked against chance; returns the stage's metrics."""
    rows = preference_rows(cfg, prepare, collect)
    pairs = [row for row in rows if "chosen" in row]  # KTO-style unpaired rows: not pairs
    columns = ("prompt", "chosen", "rejected")
    train = [{k: p[k] for k in columns} for p in pairs if p["split"] == "train"]
    heldout = [p for p in pairs if p["split"] == "eval"]
    unpaired = len(rows) - len(pairs)
    require(cfg.data.min_examples, len(train), "training pairs", "reward", unpaired)
    metrics: dict = {"train_pairs": len(train), "eval_pairs": len(heldout)}
    metrics |= origin_counts(pairs)
    _log_provenance(prepare, collect, pairs)
    start = start_model(cfg, prepare, sft)
    for index in range(cfg.reward_model.ensemble_size):
        out = work / member_dir(index)
        # trained before a crash: keep it (rank 0 decides, so N processes agree)
        if distributed.broadcast_object((out / MEMBER_METRICS).exists()):
            member = json.loads((out / MEMBER_METRICS).read_text())
        else:
            # Members differ by seed (head init, data order): the usual cheap ensemble.
            seed = cfg.run.seed + index
            member = train_member(cfg, start, train, heldout, seed, out)
        what = "reward" if index == 0 else f"reward (ensemble member {index})"
        check_reward_model(
            {**member, "eval_pairs": len(heldout)}, what,
            cfg.reward_model.fail_at_accuracy, cfg.reward_model.min_score_std,
        )  # fmt: skip
        prefix = "" if index == 0 else f"member_{index}_"
        metrics.update({prefix + key: value for key, value in member.items()})
    metrics["ensemble_size"] = cfg.reward_model.ensemble_size
    tracking.log_metrics(metrics)
    return metrics
