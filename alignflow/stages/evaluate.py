"""Stage 6: base vs SFT vs the aligned policy on held-out prompts: the judge (`evaluate.judge`), the
reward model, refusals (demo prompts), KL, win-rate."""

from __future__ import annotations

from pathlib import Path

from alignflow import charts, tracking
from alignflow.config import PipelineConfig
from alignflow.metrics import (
    REFERENCE_METRICS,
    check_column,
    check_references,
    interval,
    reference_scores,
    safety_rates,
)
from alignflow.stages import (
    EVAL_CHART,
    POLICY_DIR,
    SAMPLES_FILE,
    SUMMARY_FILE,
    TABLE_FILE,
    dataset_file,
)
from alignflow.stages.upstream import base_model, reward_model_dirs, start_model
from alignflow.store import StageResult, read_jsonl, write_json_atomic, write_jsonl


def _sample_rows(rows, samples, scored) -> list[dict]:
    """One row per held-out prompt with every policy's greedy and sampled responses and each
    per-sample figure (`scored[name][figure]`, [sample][prompt]) as `<policy>_<figure>`."""
    out = []
    for i, row in enumerate(rows):
        record = dict(row)
        for name, policy in samples.items():
            record[f"{name}_greedy"] = policy.greedy[i]
            record[f"{name}_samples"] = [texts[i] for texts in policy.samples]
            for figure, grid in scored[name].items():
                record[f"{name}_{figure}"] = [values[i] for values in grid]
        out.append(record)
    return out


def run(
    cfg: PipelineConfig,
    work: Path,
    prepare: StageResult,
    sft: StageResult | None,
    reward: StageResult | None,
    policy: StageResult,
) -> dict:
    """Sample and judge every policy on the held-out prompts into `work` (SAMPLES_FILE, the
    summary and its table); returns {"summary", "table"}."""
    from alignflow import evaluation
    from alignflow.models import (
        default_device,
        load_causal_lm,
        load_scalar_head_model,
        load_tokenizer,
    )

    trust, device = cfg.model.trust_remote_code, default_device()
    # The policy's start and KL anchor: SFT, or the base model when SFT was skipped.
    reference_name, start = ("sft" if sft else "base"), start_model(cfg, prepare, sft)
    tokenizer = load_tokenizer(start, trust)
    # with the tokenizer: a base model that ships no pad (Llama-3.1) samples with ours
    reference = load_causal_lm(start, trust, device, tokenizer=tokenizer).eval()
    reward_dirs = reward_model_dirs(cfg, reward)
    reward_model = None
    if reward_dirs:  # the first (ensemble member 0) scores; none with rule rewards only
        pad = tokenizer.pad_token_id
        reward_model = load_scalar_head_model(reward_dirs[0], trust, pad, device).eval()
    rows = read_jsonl(prepare.path(dataset_file("heldout")))
    prompts = [row["prompt"] for row in rows]
    sources = {"base": base_model(cfg, prepare), "sft": start} if sft else {"base": start}
    sources["policy"] = str(policy.path(POLICY_DIR))
    ev = cfg.evaluate
    judge = evaluation.make_judge(
        ev.judge, "evaluate.judge", reward_model, tokenizer, ev.batch_size
    )
    samples, per_policy, judged, fluency_model = {}, {}, {}, None
    scored: dict[str, dict[str, list[list[float]]]] = {}  # per policy: per-sample figures
    column = ev.reference_column()
    heldout = str(prepare.path(dataset_file("heldout")))
    references = check_references(rows, column, heldout) if column else None
    safety = ev.safety()
    refusals = None
    if safety is not None:
        check_column(rows, safety.harmful_column, heldout, "safety's harmful_column")
        refusals = evaluation.make_judge(
            safety.classifier, "evaluate.metrics safety classifier", None, tokenizer, ev.batch_size
        )
    subsets: dict[str, dict[str, list[list[float]]]] = {}  # figures over some prompts only
    for name, source in sources.items():
        model = (
            reference
            if name == reference_name
            else load_causal_lm(source, trust, device, tokenizer=tokenizer)
        )
        fluency_model = model if name == "base" else fluency_model  # "base" comes first
        samples[name] = evaluation.sample_policy(
            model, reference, tokenizer, prompts, ev.sampling,
            ev.samples_per_prompt, ev.seed, ev.batch_size, exact_kl=True,
        )  # fmt: skip
        fluency = evaluation.fluency(fluency_model, tokenizer, rows, samples[name], ev.batch_size)
        judged[name] = judge(rows, samples[name])
        rm = (  # the reward model judging: its scores are the judge's
            judged[name]
            if ev.judge == "reward_model"
            else evaluation.score_with_reward_model(
                reward_model, tokenizer, rows, samples[name], ev.batch_size
            )
            if reward_model is not None
            else None
        )
        per_policy[name] = evaluation.policy_metrics(rows, samples[name], judged[name], rm, fluency)
        scored[name] = {"judge": judged[name], "fluency": _grid(fluency, len(rows))}
        if references is not None:
            for metric in REFERENCE_METRICS:
                grid = reference_scores(metric, samples[name].samples, references)
                scored[name][metric] = grid
                per_policy[name][metric] = evaluation.grid_mean(grid)
        if refusals is not None:
            rates = safety_rates(rows, refusals(rows, samples[name]), safety.harmful_column,
                                 safety.harmful_values)  # fmt: skip
            for key, (rate, grid) in rates.items():
                per_policy[name][key] = rate
                subsets.setdefault(name, {})[key] = grid
    wins = evaluation.win_rate(rows, judged["policy"], judged[reference_name])
    # the reward stage's held-out pair accuracy, overall and per prompt family
    trained = reward.metrics if reward else {}
    rm_accuracy = (
        trained.get("accuracy"),
        {
            key.removeprefix("accuracy_"): value
            for key, value in trained.items()
            if key.startswith("accuracy_")
        },
    )
    summary = evaluation.summarize(
        per_policy, wins, rm_accuracy, cfg.policy.algorithm, ev.judge, reference_name
    )
    summary["samples_per_policy"] = len(rows) * ev.samples_per_prompt
    grids = {name: {**scored[name], **subsets.get(name, {})} for name in scored}
    summary["intervals"] = {  # 95 % bootstrap over prompts, per figure and policy
        ("judge_score" if figure == "judge" else figure): {
            name: dict(
                zip(("low", "high"), interval(grids[name][figure], seed=ev.seed), strict=True)
            )
            for name in grids
        }
        for figure in grids["policy"]
    }
    table = evaluation.markdown_table(summary)
    if ev.samples_shown:
        greedy = {name: policy.greedy for name, policy in samples.items()}
        table += "\n\n" + evaluation.samples_markdown(rows, greedy, ev.samples_shown)
    sample_rows = _sample_rows(rows, samples, scored)
    write_jsonl(work / SAMPLES_FILE, sample_rows)
    write_json_atomic(work / SUMMARY_FILE, summary)
    (work / TABLE_FILE).write_text(table + "\n")
    tracking.log_metrics(tracking.flatten(summary))
    tracking.log_text(table, TABLE_FILE)
    chart = charts.evaluation_bars(summary)
    charts.save(chart, work / EVAL_CHART)
    tracking.log_figure(chart, EVAL_CHART)
    tracking.log_table(
        [
            {
                "prompt": r["prompt"][0]["content"],
                reference_name: r[f"{reference_name}_greedy"],
                "policy": r["policy_greedy"],
            }
            for r in sample_rows
        ],  # fmt: skip
        "greedy_samples.json",
    )
    return {"summary": summary, "table": table}


def _grid(values: list[float], prompts: int) -> list[list[float]]:
    """A flat list in the samples' order as [sample_index][prompt_index]."""
    return [values[start : start + prompts] for start in range(0, len(values), prompts)]
