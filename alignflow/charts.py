"""Pictures of a run: the evaluation table as bar charts (one panel per figure, a bar per policy,
its 95 % interval as an error bar) and the policy stage's training curves (reward, KL, score per
update). PNG via matplotlib's Agg backend: no display needed."""

from __future__ import annotations

from collections.abc import Sequence

# Evaluation figures drawn, in this order, when the summary has them.
EVAL_FIGURES = ("judge_score", "reward_score", "llm_grade", "llm_win_rate_vs_sft",
                "llm_win_rate_vs_champion", "bleu", "rouge_l", "refusal_rate",
                "false_refusal_rate", "fluency", "kl_to_sft")  # fmt: skip
PPO_CURVES = ("reward", "rlhf_reward", "kl", "score", "value_loss", "entropy")
# What a transformers Trainer logs that is worth a curve (SFT, reward model, TRL algorithms).
TRAINER_CURVES = ("loss", "accuracy", "rewards/accuracies", "rewards/margins", "reward", "kl",
                  "mean_token_accuracy", "learning_rate")  # fmt: skip
POLICY_COLOURS = {"base": "#9e9e9e", "sft": "#4c78a8", "policy": "#f58518", "champion": "#54a24b"}


def _figure(panels: int, width: float = 3.2, height: float = 2.8):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    columns = min(panels, 4)
    rows = -(-panels // columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for unused in axes[panels:]:
        unused.set_visible(False)
    return figure, axes


def evaluation_bars(summary: dict):
    """The evaluation table of `summary` (evaluation.summarize, with its intervals) as bars."""
    figures = [name for name in EVAL_FIGURES if isinstance(summary.get(name), dict)]
    figures += [name for name in summary if name.startswith("bench_")]
    intervals = summary.get("intervals", {})
    algorithm = summary.get("algorithm", "policy")
    figure, axes = _figure(len(figures))
    for axis, name in zip(axes, figures, strict=False):
        policies = list(summary[name])
        values = [summary[name][policy] for policy in policies]
        bounds = {  # a NaN interval (nothing judged) draws no error bar
            p: b for p, b in intervals.get(name, {}).items() if b["low"] == b["low"]
        }
        errors = [
            [value - bounds[p]["low"] if p in bounds else 0 for p, value in zip(policies, values, strict=True)],
            [bounds[p]["high"] - value if p in bounds else 0 for p, value in zip(policies, values, strict=True)],
        ]  # fmt: skip
        labels = [algorithm if policy == "policy" else policy for policy in policies]
        colours = [POLICY_COLOURS.get(policy, "#b279a2") for policy in policies]
        axis.bar(labels, values, color=colours, yerr=errors if bounds else None, capsize=4)
        axis.set_title(name)
        axis.axhline(0, color="black", linewidth=0.5)
    figure.suptitle(f"held-out evaluation (judge: {summary.get('judge', '?')})", fontsize=10)
    return figure


def runs_bars(runs: Sequence, names: Sequence[str]):
    """Two or more runs side by side (`alignflow compare --chart`): one panel per evaluation
    figure, a bar per run for its policy (`eval.<figure>.policy` on the parent run), the 95 %
    interval as an error bar when the run logged one. `names`: the runs' labels, in order."""
    figures = [
        name for name in EVAL_FIGURES
        if any(f"eval.{name}.policy" in run.data.metrics for run in runs)
    ]  # fmt: skip
    figure, axes = _figure(max(len(figures), 1))
    for axis, name in zip(axes, figures, strict=False):
        metrics = [run.data.metrics for run in runs]
        values = [m.get(f"eval.{name}.policy", float("nan")) for m in metrics]
        low = [m.get(f"eval.intervals.{name}.policy.low") for m in metrics]
        high = [m.get(f"eval.intervals.{name}.policy.high") for m in metrics]
        errors = [
            [v - lo if lo is not None else 0 for v, lo in zip(values, low, strict=True)],
            [hi - v if hi is not None else 0 for v, hi in zip(values, high, strict=True)],
        ]
        axis.bar(range(len(runs)), values, yerr=errors, capsize=4, color="#f58518")
        axis.set_xticks(range(len(runs)), names, rotation=30, ha="right", fontsize=7)
        axis.set_title(f"{name} (policy)")
    figure.suptitle("runs compared", fontsize=10)
    return figure


def training_curves(history: Sequence[dict], keys: Sequence[str] = PPO_CURVES, title: str = "ppo"):
    """One panel per key of `history` (one dict per update), against the update number."""
    present = [key for key in keys if any(key in entry for entry in history)]
    figure, axes = _figure(max(len(present), 1))
    for axis, key in zip(axes, present, strict=False):
        points = [(i + 1, entry[key]) for i, entry in enumerate(history) if key in entry]
        axis.plot([x for x, _ in points], [y for _, y in points], color="#f58518")
        axis.set_title(key)
        axis.set_xlabel("update")
    figure.suptitle(title, fontsize=10)
    return figure


def trainer_curves(log_history: Sequence[dict], title: str):
    """A transformers Trainer's logged training steps (`state.log_history`) as curves."""
    steps = [entry for entry in log_history if "loss" in entry and "train_runtime" not in entry]
    figure = training_curves(steps, TRAINER_CURVES, title)
    for axis in figure.axes:
        axis.set_xlabel("logging step")
    return figure


def save(figure, path) -> None:
    figure.savefig(path, dpi=100)
