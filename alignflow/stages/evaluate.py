"""Stage 6: base vs SFT vs the aligned policy on held-out prompts: the judge (`evaluate.judge`), the
reward model, refusals (demo prompts), KL, win-rate."""

from __future__ import annotations

import contextlib
import logging
import time
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

log = logging.getLogger(__name__)
CHAMPIONS_DIR = ".champions"  # under the artifacts root: registered champions, one per version
# Figures scored per response (a [sample][prompt] grid), kept beside each response in SAMPLES_FILE;
# the LLM judge's cover its first samples and prompts only.
PER_RESPONSE = ("judge", "reward_score", "fluency", "kl_to_sft", "bleu", "rouge_l",
                "llm_win_rate_vs_sft", "llm_win_rate_vs_champion", "llm_grade")  # fmt: skip


def _sample_rows(rows, samples, scored) -> list[dict]:
    """One row per held-out prompt with every policy's greedy and sampled responses and each
    per-sample figure (`scored[name][figure]`, [sample][prompt]) as `<policy>_<figure>`."""
    out = []
    for i, row in enumerate(rows):
        record = dict(row)
        for name, policy in samples.items():
            record[f"{name}_greedy"] = policy.greedy[i]
            record[f"{name}_samples"] = [texts[i] for texts in policy.samples]
            for figure in PER_RESPONSE:
                values = [row[i] for row in scored[name].get(figure, []) if i < len(row)]
                if values:
                    record[f"{name}_{figure}"] = values
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
    champion = _champion(cfg, policy, tokenizer)
    if champion is not None:
        sources["champion"] = champion[1]
    ev = cfg.evaluate
    judge = evaluation.make_judge(
        ev.judge, "evaluate.judge", reward_model, tokenizer, ev.batch_size
    )
    samples, per_policy, judged, fluency_model = {}, {}, {}, None
    grids: dict[str, dict[str, list[list[float]]]] = {}  # per policy: per-sample figures
    heldout = str(prepare.path(dataset_file("heldout")))
    column = ev.reference_column()
    references = check_references(rows, column, heldout) if column else None
    safety = ev.safety()
    refusals = _refusal_classifier(cfg, safety, rows, heldout, tokenizer) if safety else None
    bench, benchmarks = ev.metric("benchmark"), {}
    if bench is not None and bench.include_path is not None:  # a wrong folder fails before sampling
        from alignflow.benchmark import include_folder

        include_folder(bench.include_path)
    llm = ev.metric("llm_judge")
    if llm is not None:  # a missing API key fails before sampling
        from alignflow.llm_evaluation import LLMEvaluator

        llm_evaluator = LLMEvaluator.of(llm)
    costs: dict[str, float] = {}  # seconds per evaluator, over every policy

    @contextlib.contextmanager
    def cost(key: str):
        started = time.perf_counter()
        yield
        costs[key] = costs.get(key, 0.0) + time.perf_counter() - started

    for name, source in sources.items():
        model = (
            reference
            if name == reference_name
            else load_causal_lm(source, trust, device, tokenizer=tokenizer)
        )
        fluency_model = model if name == "base" else fluency_model  # "base" comes first
        with cost("sampling"):  # with the exact KL to the reference
            samples[name] = evaluation.sample_policy(
                model, reference, tokenizer, prompts, ev.sampling,
                ev.samples_per_prompt, ev.seed, ev.batch_size, exact_kl=True,
            )  # fmt: skip
        with cost("fluency"):
            fluency = evaluation.fluency(
                fluency_model, tokenizer, rows, samples[name], ev.batch_size
            )
        with cost("judge"):
            judged[name] = judge(rows, samples[name])
        with cost("reward_model"):
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
        grids[name] = {
            "judge": judged[name],
            "fluency": _grid(fluency, len(rows)),
            "kl_to_sft": samples[name].kl_to_reference,
            "mean_words": [
                [len(text.split()) for text in texts] for texts in samples[name].samples
            ],
        }
        if rm is not None:
            grids[name]["reward_score"] = rm
        if references is not None:
            with cost("reference"):
                scored = {m: reference_scores(m, samples[name].samples, references)
                          for m in REFERENCE_METRICS}  # fmt: skip
            for metric in REFERENCE_METRICS:
                grids[name][metric] = scored[metric]
                per_policy[name][metric] = evaluation.grid_mean(grids[name][metric])
        if refusals is not None:
            with cost("safety"):
                refused = refusals(rows, samples[name])
            rates = safety_rates(rows, refused, safety.harmful_column, safety.harmful_values)
            for key, (rate, grid) in rates.items():
                per_policy[name][key] = rate
                grids[name][key] = grid
        if bench is not None:
            from alignflow.benchmark import run_benchmark

            with cost("benchmark"):
                results = run_benchmark(
                    model, tokenizer, bench.tasks, bench.include_path, bench.limit,
                    ev.batch_size, bench.num_fewshot, ev.seed,
                )  # fmt: skip
            for task, result in results.items():
                per_policy[name][f"bench_{task}"] = result.value
                grids[name][f"bench_{task}"] = [result.per_sample]
                benchmarks[task] = {"metric": result.metric, "documents": result.n}
        if model is not reference:
            del model
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
    outcomes = evaluation.win_outcomes(judged["policy"], judged[reference_name])
    summary["win_rate_policy_vs_sft_interval"] = dict(  # the judge's win-rate's
        zip(("low", "high"), interval(outcomes, seed=ev.seed), strict=True)
    )
    if champion is not None:
        summary["champion_version"] = champion[0]
        summary["win_rate_policy_vs_champion"] = evaluation.win_rate(
            rows, judged["policy"], judged["champion"]
        )[0]
    if benchmarks:
        summary["benchmarks"] = benchmarks
    if llm is not None:
        with cost("llm_judge"):
            summary.update(_llm_judged(llm_evaluator, rows, samples, reference_name, grids))
    summary["seconds"] = {key: round(value, 2) for key, value in costs.items()}
    summary["intervals"] = {  # 95 % bootstrap over prompts, per figure and policy
        ("judge_score" if figure == "judge" else figure): {
            name: dict(zip(("low", "high"), interval(figures[figure], seed=ev.seed), strict=True))
            for name, figures in grids.items()
            if figure in figures
        }
        for figure in dict.fromkeys(f for figures in grids.values() for f in figures)
    }
    table = evaluation.markdown_table(summary)
    if ev.samples_shown:
        greedy = {name: policy.greedy for name, policy in samples.items()}
        table += "\n\n" + evaluation.samples_markdown(rows, greedy, ev.samples_shown)
    sample_rows = _sample_rows(rows, samples, grids)
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


def _champion(cfg: PipelineConfig, policy: StageResult, tokenizer) -> tuple[str, str] | None:
    """(version, local folder) of the registered champion to evaluate beside the run's policies;
    None when evaluate.champion is off, the registry has none, it is this run's own policy, it
    speaks another tokenizer (a different base model: no shared KL reference), or it cannot be
    downloaded (a warning: the column is optional)."""
    if not cfg.evaluate.champion:
        return None
    from alignflow.models import load_tokenizer
    from alignflow.pipeline import tracking_uri

    name = cfg.registry.model_name
    version = tracking.registered_champion(tracking_uri(cfg), name, policy.cache_key)
    digest = None if version is None else version.tags.get(tracking.WEIGHTS_TAG)
    if version is None or digest == tracking.content_digest(policy.path(POLICY_DIR)):
        return None
    # one folder per content (a version number may name other weights in another store)
    folder = Path(cfg.run.artifacts_root) / CHAMPIONS_DIR / f"{name}-{digest or version.run_id}"
    try:
        model = tracking.download_model_once(f"models:/{name}/{version.version}", folder)
        vocabulary = load_tokenizer(str(model), cfg.model.trust_remote_code).get_vocab()
    except (OSError, ValueError, RuntimeError) as error:
        log.warning("evaluate: champion %s v%s not evaluated: %s", name, version.version, error)
        return None
    if vocabulary != tokenizer.get_vocab():
        log.warning("evaluate: champion %s v%s has another tokenizer: not evaluated beside this "
                    "run's policies", name, version.version)  # fmt: skip
        return None
    log.info("evaluate: the registered champion %s v%s is evaluated too", name, version.version)
    return str(version.version), str(model)


def _refusal_classifier(cfg: PipelineConfig, safety, rows, heldout: str, tokenizer):
    """The safety evaluator's classifier as a (rows, samples) -> [sample][prompt] scorer."""
    from alignflow import evaluation

    check_column(rows, safety.harmful_column, heldout, "safety's harmful_column")
    spec, batch = safety.classifier, cfg.evaluate.batch_size
    if spec.startswith("reward_model:"):
        import torch
        from transformers import AutoConfig

        from alignflow.models import default_device, load_scalar_head_model, load_tokenizer

        path, trust = spec.removeprefix("reward_model:"), cfg.model.trust_remote_code
        labels = AutoConfig.from_pretrained(path, trust_remote_code=trust).num_labels
        if labels != 1:
            raise ValueError(
                f"evaluate.metrics safety classifier {spec}: a model with {labels} outputs; the "
                "classifier is a single-output (reward) model whose score says refusal"
            )
        own = load_tokenizer(path, trust)  # the classifier reads text as it was trained to
        model = load_scalar_head_model(path, trust, own.pad_token_id, default_device()).eval()
        score = evaluation.make_judge("reward_model", "safety classifier", model, own, batch)
        return lambda rows, samples: torch.sigmoid(torch.tensor(score(rows, samples))).tolist()
    if spec == "llm_judge":
        from alignflow.llm_evaluation import refusal_classifier

        classify = refusal_classifier(safety.llm_judge, safety.refusal_template)
        return lambda rows, samples: [
            classify([row["prompt"] for row in rows], texts) for texts in samples.samples
        ]
    return evaluation.make_judge(spec, "evaluate.metrics safety classifier", None, tokenizer, batch)


def _llm_judged(evaluator, rows, samples, reference_name: str, grids) -> dict:
    """The llm_judge evaluator's figures (into `grids` too) and its report: every other policy's
    pairwise win-rate against the reference, the policy's against the champion, and every policy's
    rubric grade."""
    from alignflow.llm_evaluation import nan_mean

    metric = evaluator.metric
    pairings = len(samples) - 1 + ("champion" in samples)
    evaluator.plan(len(samples), pairings, len(rows), len(samples[reference_name].samples))
    out: dict[str, dict] = {"llm_win_rate_vs_sft": {}}
    against = samples[reference_name].samples
    for name in samples:
        if name != reference_name:
            grid = evaluator.pairwise(rows, samples[name].samples, against)
            grids[name]["llm_win_rate_vs_sft"] = grid
            out["llm_win_rate_vs_sft"][name] = nan_mean(grid)
    if "champion" in samples:
        grid = evaluator.pairwise(rows, samples["policy"].samples, samples["champion"].samples)
        grids["policy"]["llm_win_rate_vs_champion"] = grid
        out["llm_win_rate_vs_champion"] = {"policy": nan_mean(grid)}
    if metric.rubric:
        out["llm_grade"] = {}
        for name in samples:
            grid = evaluator.grades(rows, samples[name].samples)
            grids[name]["llm_grade"] = grid
            out["llm_grade"][name] = nan_mean(grid)
    out["llm_judge"] = evaluator.report()
    log.info("evaluate: llm_judge %s", out["llm_judge"])
    return out


def _grid(values: list[float], prompts: int) -> list[list[float]]:
    """A flat list in the samples' order as [sample_index][prompt_index]."""
    return [values[start : start + prompts] for start in range(0, len(values), prompts)]
