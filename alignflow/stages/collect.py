"""Stage 3: K sampled responses per prompt from a chosen policy, labelled by every configured
labeler (rules, reward models, an LLM judge, people, an annotation team's file), aggregated by
majority into preference pairs, and appended to the feedback store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alignflow import tracking
from alignflow.config import HumanLabelConfig, LabelerConfig, PipelineConfig
from alignflow.feedback.records import Comparison, PreferenceRecord
from alignflow.stages import COMPARISONS_FILE, PAIRS_FILE, RECORDS_FILE, dataset_file
from alignflow.stages.upstream import start_model
from alignflow.store import StageResult, read_jsonl, write_jsonl

# How people label (the application's: tasks.label pauses the Prefect flow for them):
# (comparisons, settings, labeler name, seed) -> (records, counts).
PeopleLabel = Callable[
    [list[Comparison], HumanLabelConfig, str, int], tuple[list[PreferenceRecord], dict]
]


def candidate_policy(cfg: PipelineConfig, prepare: StageResult, sft: StageResult | None) -> str:
    """The folder of the policy that samples candidates (collect.policy; "sft" is the base model
    when sft.enabled is false)."""
    if cfg.collect.policy == "sft":
        return start_model(cfg, prepare, sft)
    if cfg.collect.policy == "champion":
        return tracking.download_registered_model(cfg.registry.model_name, "champion")
    if not (Path(cfg.collect.policy) / "config.json").is_file():
        raise ValueError(
            f"collect.policy: {cfg.collect.policy!r} is not a model folder (no config.json); "
            "use sft, champion or a local model folder"
        )
    return cfg.collect.policy


def served_prompts(cfg: PipelineConfig) -> list[dict]:
    """What people asked the served model, when collect.served is on (alignflow.serve)."""
    if not (cfg.collect.served and cfg.feedback_store_path):
        return []
    from alignflow.serve import read_served

    return read_served(cfg.feedback_store_path)


def sample_comparisons(cfg: PipelineConfig, prompts: list[dict], policy_dir: str, device: str):
    """K samples per prompt, identical ones collapsed. Returns (comparisons, tokenizer, counts)."""
    import torch

    from alignflow.feedback.labelers import build_comparisons
    from alignflow.models import load_causal_lm, load_tokenizer
    from alignflow.rl.rollout import sample_texts

    k, trust = cfg.collect.samples_per_prompt, cfg.model.trust_remote_code
    tokenizer = load_tokenizer(policy_dir, trust)
    policy = load_causal_lm(policy_dir, trust, device, tokenizer=tokenizer).eval()
    repeated = [row["prompt"] for row in prompts for _ in range(k)]
    torch.manual_seed(cfg.run.seed)
    texts = sample_texts(
        policy, tokenizer, repeated, cfg.collect.sampling, cfg.collect.batch_size,
        desc="collect: sampling",
    )  # fmt: skip
    candidates = [texts[i * k : (i + 1) * k] for i in range(len(prompts))]
    for row, texts_of_row in zip(prompts, candidates, strict=True):
        if "served_response" in row:  # what the served model answered competes with the samples
            texts_of_row.insert(0, row["served_response"])
    comparisons, counts = build_comparisons(prompts, candidates)
    counts["responses"] = len(texts)
    return comparisons, tokenizer, counts


def run_labeler(
    cfg: PipelineConfig,
    index: int,
    labeler: LabelerConfig,
    comparisons: list[Comparison],
    tokenizer,
    work: Path,
    device: str,
    label_by_people: PeopleLabel | None = None,
) -> tuple[list[PreferenceRecord], dict[str, float]]:
    """One labeler's records for every comparison, and its counters (for MLflow). A `human`
    labeler needs `label_by_people`, which the Prefect task hands in."""
    from alignflow.feedback import labelers as L

    name, where = L.labeler_id(labeler), f"collect.labelers[{index}]"
    if labeler.kind == "rule":
        rewarder = L.rule_rewarder(labeler.function, tokenizer, f"{where}.function")
        return L.score_comparisons(rewarder, comparisons, name), {}
    if labeler.kind == "reward_model":
        trust = cfg.model.trust_remote_code
        rewarder = L.reward_model_rewarder(labeler.models, cfg.rewards, tokenizer, trust, device)
        return L.score_comparisons(rewarder, comparisons, name), {}
    if labeler.kind == "llm_judge":
        from alignflow.feedback.llm_judge import LLMJudge

        judge = LLMJudge(labeler.llm_judge)
        judge.labeler = name
        return judge.label(comparisons)
    if labeler.kind == "human":
        if label_by_people is None:
            raise ValueError(
                f"{where}: people label inside a Prefect flow run (alignflow run), which pauses "
                "for them; this stage was run without one"
            )
        records, counts = label_by_people(comparisons, labeler.human, name, cfg.run.seed)
        return records, dict(counts)
    exported = L.export_comparisons(comparisons, work, labeler.file.format)
    if labeler.file.answers is None:
        raise L.LabelError(
            f"{where}: comparisons exported to {exported}; have them labelled (fill `ranking`, "
            f"e.g. B>A=C) and set {where}.file.answers to the answers file"
        )
    records, counts = L.import_answers(Path(labeler.file.answers), comparisons, name)
    return records, dict(counts)


def pairs_from_records(
    cfg: PipelineConfig, comparisons: list[Comparison], records: list[PreferenceRecord]
) -> tuple[list[dict], dict]:
    """Majority pairs over all labelers as training rows, split train/eval by prompt (never by
    pair) with a hash of the comparison, so the split is stable as feedback grows."""
    from alignflow.data.clean import split_of
    from alignflow.feedback.aggregate import aggregate

    by_id = {comparison.id: comparison for comparison in comparisons}
    decided, _ = aggregate(records)  # what became of every unit is in aggregate.report
    rows = []
    for pair in decided:
        comparison = by_id[pair.comparison_id]
        split = split_of({"id": comparison.id}, cfg.reward_model.eval_fraction, str(cfg.run.seed))
        rows.append(
            {
                "prompt": comparison.prompt,
                "chosen": [{"role": "assistant", "content": comparison.candidates[pair.chosen]}],
                "rejected": [
                    {"role": "assistant", "content": comparison.candidates[pair.rejected]}
                ],
                **comparison.meta,
                "comparison_id": comparison.id,
                "split": split,
            }
        )
    counts = {}
    for split in ("train", "eval"):
        counts[f"pairs_{split}"] = sum(row["split"] == split for row in rows)
    return rows, counts


def run(
    cfg: PipelineConfig,
    work: Path,
    prepare: StageResult,
    sft: StageResult | None,
    label_by_people: PeopleLabel | None = None,
) -> dict:
    """Sample, label and pair into `work` (PAIRS_FILE, with every comparison and record beside
    it), appending the records to the feedback store; returns the stage's metrics."""
    from alignflow.feedback import store
    from alignflow.feedback.aggregate import report
    from alignflow.models import default_device

    device = default_device()
    prompts = read_jsonl(prepare.path(dataset_file("preference_prompts")))
    prompts = prompts[: cfg.collect.max_prompts]
    served = served_prompts(cfg)
    prompts += served
    policy_dir = candidate_policy(cfg, prepare, sft)
    comparisons, tokenizer, counts = sample_comparisons(cfg, prompts, policy_dir, device)
    records: list[PreferenceRecord] = []
    metrics: dict = {"prompts": len(prompts), "comparisons": len(comparisons), **counts}
    metrics["served_exchanges"] = len(served)
    for index, labeler in enumerate(cfg.collect.labelers):
        got, label_counts = run_labeler(
            cfg, index, labeler, comparisons, tokenizer, work, device, label_by_people
        )
        records += got
        metrics.update({f"labeler_{index}_{k}": v for k, v in label_counts.items()})
        metrics[f"labeler_{index}_records"] = len(got)
    pairs, pair_counts = pairs_from_records(cfg, comparisons, records)
    if not pairs:
        raise ValueError("collect: the labels decide no pair (every candidate tied)")
    metrics.update(pair_counts)
    # Agreement, position bias, what the majority decided; lists (per labeler pair) aside.
    agreement = report(records)
    tracking.log_dict(agreement, "agreement.json")
    metrics.update({k: v for k, v in agreement.items() if not isinstance(v, list)})
    write_jsonl(work / COMPARISONS_FILE, [c.model_dump(mode="json") for c in comparisons])
    write_jsonl(work / RECORDS_FILE, [r.model_dump(mode="json") for r in records])
    write_jsonl(work / PAIRS_FILE, pairs)
    # Provenance: the reward stage logs the pairs as an MLflow dataset input under this digest.
    metrics["preference_digest"] = store.content_digest(records)
    tracking.set_tags({"alignflow.preference_digest": metrics["preference_digest"]})
    if cfg.feedback_store_path:
        store.append(cfg.feedback_store_path, records)
    tracking.log_metrics(metrics)
    return metrics
