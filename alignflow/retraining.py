"""The retraining loop's steps, without orchestration: which feedback is new, the champion as the
round's starting point, a per-round config, the champion-vs-challenger comparison on held-out
prompts, and the decision applied to the registry. flows/retrain.py connects them."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from pydantic import BaseModel

from alignflow import pipeline, tracking
from alignflow.config import PipelineConfig
from alignflow.promotion import Decision
from alignflow.stages import PAIRS_FILE
from alignflow.store import StageResult, read_jsonl, write_json_atomic, write_jsonl

log = logging.getLogger(__name__)

ROUNDS_DIR = "retrain"  # under run.artifacts_root: one folder per round
WATERMARK_TAG = "alignflow.feedback_watermark"
MODEL_TAG = "alignflow.registry_model"
DECISION_TAG = "alignflow.decision"
CHAMPION, CHALLENGER = "champion", "challenger"


class FeedbackBatch(BaseModel):
    """What the feedback store holds for this round: everything up to `watermark`, of which
    `new_records` arrived after the last finished round's watermark."""

    store: str
    previous_watermark: str | None
    watermark: str | None
    new_records: int


class Champion(BaseModel):
    model_name: str
    version: str


def feedback_store(cfg: PipelineConfig) -> Path:
    if cfg.feedback_store_path is None:
        raise ValueError(
            "retrain: collect.feedback_store is not set, so there is no feedback to read"
        )
    return cfg.feedback_store_path


def last_watermark(cfg: PipelineConfig) -> str | None:
    """The feedback watermark of the newest finished round for this registered model."""
    client = _client(cfg)
    experiment = client.get_experiment_by_name(cfg.run.experiment)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=(
            f"tags.`{pipeline.FLOW_TAG}` = 'retrain' and "
            f"tags.`{MODEL_TAG}` = '{cfg.registry.model_name}' and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].data.tags.get(WATERMARK_TAG) if runs else None


def new_feedback(cfg: PipelineConfig) -> FeedbackBatch:
    from alignflow.feedback import store

    path = feedback_store(cfg)
    previous = last_watermark(cfg)
    new, watermark = store.read(path, after=previous)
    return FeedbackBatch(
        store=str(path), previous_watermark=previous, watermark=watermark, new_records=len(new)
    )


def current_champion(cfg: PipelineConfig) -> Champion:
    name = cfg.registry.model_name
    version = tracking.registered_champion(pipeline.tracking_uri(cfg), name)
    if version is None:
        raise ValueError(
            f"registry: no {name}@{CHAMPION} in {pipeline.tracking_uri(cfg)}; run the pipeline "
            "first (alignflow run CONFIG): its first registered version (a policy that beat its "
            "reference) becomes the champion"
        )
    return Champion(model_name=name, version=str(version.version))


def round_config(
    cfg: PipelineConfig, champion: Champion, feedback: FeedbackBatch
) -> PipelineConfig:
    """The config of one round: its stage outputs under their own folder, keyed by the champion
    and the feedback it learns from (a crashed round resumes; rounds never share outputs), with
    the same MLflow store and experiment."""
    key = hashlib.sha256(f"{champion.version}\0{feedback.watermark}".encode()).hexdigest()[:10]
    root = (
        Path(cfg.run.artifacts_root)
        / ROUNDS_DIR
        / f"{champion.model_name}-v{champion.version}-{key}"
    )
    run = cfg.run.model_copy(
        update={"artifacts_root": str(root), "mlflow_tracking_uri": pipeline.tracking_uri(cfg)}
    )
    return cfg.model_copy(update={"run": run})


def champion_stage(round_cfg: PipelineConfig, champion: Champion) -> StageResult:
    """The champion downloaded as the round's starting policy, laid out like the sft stage's
    output, so the reward and policy stages start from it (and measure KL against it)."""
    import mlflow

    folder = Path(round_cfg.run.artifacts_root) / CHAMPION
    mlflow.set_tracking_uri(round_cfg.run.mlflow_tracking_uri)
    tracking.download_model_once(f"models:/{champion.model_name}@{CHAMPION}", folder)
    return StageResult(
        stage="sft",
        cache_key=f"{CHAMPION}-v{champion.version}",
        output=str(folder),
        metrics={"champion_version": champion.version},
    )


def feedback_stage(round_cfg: PipelineConfig, feedback: FeedbackBatch) -> StageResult:
    """Every record up to the round's watermark as majority pairs, in the collect stage's layout."""
    from alignflow.feedback import store
    from alignflow.feedback.records import Comparison
    from alignflow.stages.collect import pairs_from_records

    records, _ = store.read(feedback.store, until=feedback.watermark)
    comparisons = {
        r.comparison_id: Comparison(
            id=r.comparison_id, prompt=r.prompt, candidates=r.candidates, meta=r.meta
        )
        for r in records
    }
    pairs, counts = pairs_from_records(round_cfg, list(comparisons.values()), records)
    if not pairs:
        raise ValueError(f"{feedback.store}: the feedback decides no preference pair")
    folder = Path(round_cfg.run.artifacts_root) / "feedback"
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / PAIRS_FILE, pairs)
    digest = store.content_digest(records)
    return StageResult(
        stage="collect",
        cache_key=f"feedback-{digest[:12]}",
        output=str(folder),
        metrics={
            "preference_digest": digest,
            "records": len(records),
            "new_records": feedback.new_records,
            **counts,
        },
    )


def _client(cfg: PipelineConfig):
    from mlflow import MlflowClient

    return MlflowClient(pipeline.tracking_uri(cfg))


def _judge(cfg: PipelineConfig, reward_dir: str | None, tokenizer):
    """`retrain.judge` as an evaluation.Judge: a rule, or the round's reward model (loaded once)."""
    from alignflow import evaluation

    reward_model = None
    if cfg.retrain.judge == "reward_model":
        if reward_dir is None:
            raise ValueError(
                "retrain.judge is reward_model, but this config has no reward model (rule rewards "
                "only): make retrain.judge a rule, or set reward_model.model"
            )
        from alignflow.models import default_device, load_scalar_head_model

        reward_model = load_scalar_head_model(
            reward_dir, cfg.model.trust_remote_code, tokenizer.pad_token_id, default_device()
        ).eval()
    return evaluation.make_judge(
        cfg.retrain.judge, "retrain.judge", reward_model, tokenizer, cfg.evaluate.batch_size
    )


def compare(
    cfg: PipelineConfig,
    heldout: Path,
    champion_dir: str,
    challenger_dir: str,
    reward_dir: str | None,
) -> tuple[Decision, list[dict]]:
    """Champion and challenger sampled on the same held-out prompts with the same seeds, scored by
    the judge; the decision and one row per prompt (first samples, mean scores)."""
    from alignflow import evaluation, promotion
    from alignflow.models import default_device, load_causal_lm, load_tokenizer

    trust, device, ev = cfg.model.trust_remote_code, default_device(), cfg.evaluate
    if cfg.retrain.gate == "llm_grade":  # before sampling: a missing API key fails at once
        from alignflow.llm_evaluation import LLMEvaluator

        evaluator = LLMEvaluator.of(ev.metric("llm_judge"))
    tokenizer = load_tokenizer(champion_dir, trust)
    champion = load_causal_lm(champion_dir, trust, device, tokenizer=tokenizer).eval()
    challenger = load_causal_lm(challenger_dir, trust, device, tokenizer=tokenizer).eval()
    rows = read_jsonl(heldout)
    prompts = [row["prompt"] for row in rows]
    n = cfg.retrain.samples_per_prompt
    samples = {
        name: evaluation.sample_policy(
            model,
            champion,
            tokenizer,
            prompts,
            cfg.evaluate.sampling,
            n,
            ev.seed,
            ev.batch_size,
            greedy=False,  # the decision reads sampled responses only
        )
        for name, model in ((CHAMPION, champion), (CHALLENGER, challenger))
    }
    r = cfg.retrain
    if r.gate == "judge":
        judge = _judge(cfg, reward_dir, tokenizer)
        scores = {name: judge(rows, s) for name, s in samples.items()}
    elif r.gate == "llm_grade":  # the LLM judge's grade of each response (NaN: ungraded)
        scores = {name: evaluator.grades(rows, s.samples) for name, s in samples.items()}
    else:  # a reference metric against the held-out answers
        from alignflow.metrics import check_references, reference_scores

        column = cfg.evaluate.reference_column()
        references = check_references(rows, column, str(heldout))
        scores = {
            name: reference_scores(r.gate, s.samples, references) for name, s in samples.items()
        }
    decision = promotion.decide(
        scores[CHALLENGER], scores[CHAMPION], r.margin, r.confidence, r.bootstrap_resamples, ev.seed
    )
    table = [
        {
            "prompt": row["prompt"][-1]["content"],
            CHAMPION: samples[CHAMPION].samples[0][i],
            CHALLENGER: samples[CHALLENGER].samples[0][i],
            f"{CHAMPION}_score": _prompt_mean(scores[CHAMPION], i),
            f"{CHALLENGER}_score": _prompt_mean(scores[CHALLENGER], i),
        }
        for i, row in enumerate(rows)
    ]
    return decision, table


def _prompt_mean(grid: list[list[float]], prompt: int) -> float | None:
    """Prompt `prompt`'s mean scored value over the samples; None when it has none (an LLM
    judge's grades cover its first prompts, and may be NaN)."""
    values = [row[prompt] for row in grid if prompt < len(row) and row[prompt] == row[prompt]]
    return sum(values) / len(values) if values else None


def apply_decision(
    cfg: PipelineConfig, decision: Decision, challenger_dir: Path, work: Path
) -> dict:
    """Register the challenger (it stays registered either way), tag the version with the
    evidence, and move the champion alias to it when promoted. Runs inside an MLflow run."""
    from alignflow.stages.register import serving_requirements

    name = cfg.registry.model_name
    verdict = "promoted" if decision.promote else "rejected"
    measured = f"judge ({cfg.retrain.judge})" if cfg.retrain.gate == "judge" else cfg.retrain.gate
    description = (
        f"Retraining challenger, {verdict}: {measured} gain over the champion "
        f"{decision.gain:+.3f} (interval {decision.ci_low:+.3f} to {decision.ci_high:+.3f}). "
        f"{decision.reason}"
    )
    registered = tracking.register_policy(
        challenger_dir, name, serving_requirements(), description=description
    )
    version = registered["version"]
    client = _client(cfg)
    evidence = {
        DECISION_TAG: verdict,
        "alignflow.gain": f"{decision.gain:.6g}",
        "alignflow.ci": f"[{decision.ci_low:.6g}, {decision.ci_high:.6g}]",
    }
    for key, value in evidence.items():
        client.set_model_version_tag(name, version, key, value)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
        client.delete_registered_model_alias(name, CHALLENGER)
    result = {"model_name": name, "version": version, "decision": verdict, **decision.model_dump()}
    write_json_atomic(work / "decision.json", result)
    tracking.log_dict(result, "decision.json")
    tracking.set_tags({DECISION_TAG: verdict})
    log.info("challenger %s v%s %s: %s", name, version, verdict, decision.reason)
    return result
