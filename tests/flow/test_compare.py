"""`alignflow compare` on the session's MLflow store: one row per pipeline run, the numbers MLflow
holds, each run's Prefect flow-run id."""

from __future__ import annotations

import re

from mlflow import MlflowClient
from typer.testing import CliRunner

from alignflow.app.cli import app
from alignflow.pipeline import tracking_uri


def _compare(pipeline_runs, *args: str):
    root = f"run.artifacts_root={pipeline_runs.root}"
    return CliRunner().invoke(app, ["compare", "configs/micro.yaml", "--set", root, *args])


def _table(output: str) -> list[dict[str, str]]:
    """Rows of the printed table, cut where the header's dash runs say the columns are."""
    header, dashes, *lines = output.strip().splitlines()
    spans = [match.span() for match in re.finditer(r"-+", dashes)]
    cut = lambda line: [line[start:end].strip() for start, end in spans]  # noqa: E731
    return [dict(zip(cut(header), cut(line), strict=True)) for line in lines]


def test_compare_lists_each_pipeline_run_with_the_metrics_mlflow_holds(pipeline_runs):
    done = _compare(pipeline_runs, "--flow", "rlhf", "--metric", "eval.refusal_rate.policy")
    assert done.exit_code == 0, done.output
    client = MlflowClient(tracking_uri(pipeline_runs.cfg))
    for summary in (pipeline_runs.first, pipeline_runs.second):
        parent = client.get_run(summary["mlflow_run_id"])
        (row,) = [r for r in _table(done.output) if r["mlflow_run"] == parent.info.run_id[:8]]
        assert row["flow"] == "rlhf"
        assert parent.data.tags["prefect.flow_run_id"].startswith(row["prefect_run"])
        assert row["policy.algorithm"] == "ppo"
        assert row["policy.ppo.updates"] == str(pipeline_runs.cfg.policy.ppo.updates)
        win_rate = parent.data.metrics["eval.win_rate_policy_vs_sft"]
        assert row["eval.win_rate_policy_vs_sft"] == f"{win_rate:.4g}"
        refusals = parent.data.metrics["eval.refusal_rate.policy"]
        assert row["eval.refusal_rate.policy"] == f"{refusals:.4g}"


def test_compare_limit_keeps_the_newest_runs(pipeline_runs):
    done = _compare(pipeline_runs, "--flow", "rlhf", "--limit", "1")
    assert done.exit_code == 0, done.output
    (row,) = _table(done.output)
    client = MlflowClient(tracking_uri(pipeline_runs.cfg))
    runs = client.search_runs(
        [client.get_experiment_by_name(pipeline_runs.cfg.run.experiment).experiment_id],
        filter_string="tags.`alignflow.flow` = 'rlhf'",
    )
    newest = max(runs, key=lambda run: run.info.start_time)
    assert row["mlflow_run"] == newest.info.run_id[:8]
    assert len(runs) >= 2  # so the limit really left one out


def test_compare_names_the_experiments_there_when_one_is_missing(pipeline_runs):
    done = _compare(pipeline_runs, "--experiment", "nope")
    assert done.exit_code == 1
    assert "no MLflow experiment 'nope'" in done.output and "alignflow" in done.output


def test_a_misspelled_param_is_refused_naming_the_closest(pipeline_runs):
    done = _compare(pipeline_runs, "--flow", "rlhf", "--param", "policy.ppo.kl.cof")
    assert done.exit_code == 2
    last = done.output.strip().splitlines()[-1]
    assert last.startswith(
        "error: --param policy.ppo.kl.cof: no listed run logged it; did you mean "
    )
    assert "policy.ppo.kl.coef" in last.split("did you mean ")[1]


def test_compare_draws_the_runs_evaluation_figures_side_by_side(pipeline_runs, tmp_path):
    chart = tmp_path / "runs.png"
    done = _compare(pipeline_runs, "--flow", "rlhf", "--chart", str(chart))
    assert done.exit_code == 0, done.output
    assert done.output.strip().splitlines()[-1] == f"chart: {chart}"
    assert chart.read_bytes()[:4] == b"\x89PNG"
    from alignflow.charts import runs_bars

    runs = [MlflowClient(tracking_uri(pipeline_runs.cfg)).get_run(s["mlflow_run_id"])
            for s in (pipeline_runs.first, pipeline_runs.second)]  # fmt: skip
    titles = [axis.get_title() for axis in runs_bars(runs, ["a", "b"]).axes if axis.get_visible()]
    assert {"judge_score (policy)", "rouge_l (policy)", "refusal_rate (policy)"} <= set(titles)
