"""Stage 7: log the trained policy (whichever `policy.algorithm` trained it) as an MLflow model and
register it under `registry.model_name`, when the held-out evaluation says it beats its reference."""

from __future__ import annotations

import logging
from importlib.metadata import version
from pathlib import Path

from alignflow import tracking
from alignflow.config import PipelineConfig
from alignflow.stages import POLICY_DIR, SAMPLES_FILE
from alignflow.store import StageResult, read_jsonl

log = logging.getLogger(__name__)

# What serving the logged model needs: pinned to what trained it.
SERVING_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "accelerate")


def serving_requirements() -> list[str]:
    return [f"{name}=={version(name).split('+')[0]}" for name in SERVING_PACKAGES]


def gate(cfg: PipelineConfig, evaluate: StageResult):
    """Whether the policy beats its reference (SFT, or the base model when SFT was skipped) on the
    held-out evaluation: the paired judge scores of the evaluate stage's samples, a mean gain above
    `registry.min_gain` and a bootstrap interval over prompts above zero (alignflow.promotion). An
    unchanged policy (gain 0) or a worse one is never registered, the first one included."""
    import numpy as np

    from alignflow.promotion import decide

    rows = read_jsonl(evaluate.path(SAMPLES_FILE))
    reference = evaluate.metrics["summary"]["reference"]
    figure = cfg.registry.gate  # a figure the evaluation scored per response (config.RegistryGate)
    ours, theirs = f"policy_{figure}", f"{reference}_{figure}"
    rows = [row for row in rows if ours in row and theirs in row]  # an LLM judge's first prompts
    if not rows:
        raise ValueError(
            f"registry.gate: the evaluation scored no response by {figure} (no reward model "
            "for reward_score?)"
        )
    policy, anchor = ([row[key] for row in rows] for key in (ours, theirs))
    registry = cfg.registry
    return decide(  # [prompt][sample] -> [sample][prompt]
        np.transpose(policy), np.transpose(anchor), registry.min_gain, registry.confidence,
        registry.bootstrap_resamples, cfg.evaluate.seed,
    )  # fmt: skip


def _gate_name(figure: str, summary: dict) -> str:
    if figure == "judge":
        return f"judge ({summary['judge']})"
    return f"{figure} (reference answers)" if figure in ("bleu", "rouge_l") else figure


def version_description(summary: dict, evidence: dict[str, float], figure: str = "judge") -> str:
    """A registered version's description: the evaluation table that earned it, and the gate."""
    from alignflow.evaluation import markdown_table

    gate_line = (
        f"**registration gate:** {_gate_name(figure, summary)} gain over {summary['reference']} "
        f"{evidence['gain']:+.3f} "
        f"(95 % interval {evidence['ci_low']:+.3f} to {evidence['ci_high']:+.3f})"
    )
    return f"{markdown_table(summary)}\n{gate_line}\n"


def version_tags(summary: dict, evidence: dict[str, float]) -> dict[str, str]:
    """A registered version's figures as tags: the policy's row of the evaluation table and the
    gate's gain and interval (`eval.<metric>`, `gate.<key>`)."""
    tags = {"alignflow.algorithm": summary["algorithm"], "alignflow.judge": summary["judge"]}
    for metric, values in summary.items():
        if isinstance(values, dict) and isinstance(values.get("policy"), int | float):
            tags[f"eval.{metric}"] = f"{values['policy']:.6g}"
    tags["eval.win_rate_vs_reference"] = f"{summary['win_rate_policy_vs_sft']:.6g}"
    return tags | {f"gate.{key}": f"{value:.6g}" for key, value in evidence.items()}


def base_license(cfg: PipelineConfig) -> str | None:
    """The license the policy inherits from its base model: the `license:` of a local model
    folder's card (README.md front matter, as on the hub), the project's own for the tiny model
    built here from scratch; None when unknown."""
    import yaml

    if cfg.model.source == "tiny":
        return "apache-2.0"
    card = Path(cfg.model.name_or_path or "") / "README.md"
    if not card.is_file():
        return None
    parts = card.read_text(encoding="utf-8", errors="replace").split("---", 2)
    if len(parts) < 3 or parts[0].strip():
        return None
    try:
        front = yaml.safe_load(parts[1])
    except yaml.YAMLError:
        return None
    value = front.get("license") if isinstance(front, dict) else None
    return value if isinstance(value, str) else None


def run(cfg: PipelineConfig, work: Path, policy: StageResult, evaluate: StageResult) -> dict:
    """Register the policy when the evaluation's gate passes; returns what was decided."""
    summary = evaluate.metrics["summary"]
    tracking.log_metrics(tracking.flatten(summary))
    decision = gate(cfg, evaluate)
    evidence = {"gain": decision.gain, "ci_low": decision.ci_low, "ci_high": decision.ci_high}
    tracking.log_metrics({f"gate_{key}": value for key, value in evidence.items()})
    if not decision.promote:
        reason = (
            f"not registered: the policy does not beat {summary['reference']} on the held-out "
            f"{_gate_name(cfg.registry.gate, summary)}. {decision.reason}"
        )
        log.warning("%s", reason)
        tracking.set_tags({"alignflow.registered": "false"})
        return {"registered": False, "reason": reason, **evidence, "warnings": [reason]}
    registered = tracking.register_policy(
        policy.path(POLICY_DIR), cfg.registry.model_name, serving_requirements(),
        description=version_description(summary, evidence, cfg.registry.gate),
        tags=version_tags(summary, evidence) | {tracking.POLICY_KEY_TAG: policy.cache_key},
        license_id=base_license(cfg),
    )  # fmt: skip
    return {"registered": True, **registered, **evidence}
