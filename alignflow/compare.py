"""`alignflow compare`: the pipeline and retraining runs of an MLflow experiment side by side, with
the params and metrics the MLflow UI shows for them (read from the same store)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from alignflow.pipeline import FLOW_TAG, PREFECT_RUN_TAG

PARAMS = ("policy.algorithm", "model.source", "run.seed", "policy.ppo.updates")
METRICS = (
    "eval.win_rate_policy_vs_sft",
    "eval.judge_score.policy",
    "eval.reward_score.policy",
    "eval.kl_policy_vs_sft",
    "eval.gain",
    "eval.ci_low",
)


def top_level_runs(
    tracking_uri: str, experiment: str, limit: int, flow: str | None = None
) -> list[Any]:
    """The experiment's newest pipeline and retraining runs, newest first: not a stage of another
    run, nor a stage run alone (`alignflow launch`, `python -m tasks.<stage>`: no evaluation to
    compare). Raises ValueError when the experiment does not exist."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise ValueError(f"no MLflow experiment '{experiment}' in {tracking_uri} (there: {names})")
    query = f"tags.`{FLOW_TAG}` = '{flow}'" if flow else ""
    runs = client.search_runs(
        [found.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"],
        max_results=max(limit * 20, 200),
    )  # fmt: skip
    return [
        run
        for run in runs
        if "mlflow.parentRunId" not in run.data.tags and "stage" not in run.data.tags
    ][:limit]


def differing_params(runs: Sequence[Any], shown: Sequence[str], most: int = 8) -> list[str]:
    """Params whose values differ between `runs` (a run without the param counts as a value),
    not in `shown`: what tells two runs of one config apart. At most `most`, by name."""
    names = sorted({name for run in runs for name in run.data.params} - set(shown))
    differ = [name for name in names if len({run.data.params.get(name) for run in runs}) > 1]
    return differ[:most]


def check_columns(runs: Sequence[Any], params: Sequence[str], metrics: Sequence[str]) -> None:
    """Raise ValueError for a requested param or metric no listed run has, naming the closest
    existing ones (a misspelled `--param policy.ppo.kl.cof` is not a column of dashes)."""
    import difflib

    for option, asked, kind in (("--param", params, "params"), ("--metric", metrics, "metrics")):
        known = {name for run in runs for name in getattr(run.data, kind)}
        for name in asked:
            if runs and name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"{option} {name}: no listed run logged it{hint}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def rows(runs: Sequence[Any], params: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """One row per run: identity, the chosen params and metrics (missing ones as None)."""
    from datetime import datetime

    table = []
    for run in runs:
        tags = run.data.tags
        row = {
            "run": run.info.run_name,
            "mlflow_run": run.info.run_id[:8],
            "prefect_run": tags.get(PREFECT_RUN_TAG, "")[:8] or None,
            "flow": tags.get(FLOW_TAG),
            "started": datetime.fromtimestamp(run.info.start_time / 1000).strftime("%m-%d %H:%M"),
            "status": run.info.status,
        }
        row |= {name: run.data.params.get(name) for name in params}
        row |= {name: run.data.metrics.get(name) for name in metrics}
        table.append(row)
    return table


def render(table: list[dict]) -> str:
    """A plain-text table; columns no run has a value in are left out."""
    if not table:
        return "no runs"
    columns = [c for c in table[0] if any(row[c] is not None for row in table)]
    cells = [[_cell(row[c]) for c in columns] for row in table]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)
